"""``serve --merge-adapters``: every stage on a file of its own (BF16, Q8_0 or
Q4_0) with its adapter merged in, made once and cached, so each stage batches
on a decoder of its own. Real merges of the shipped recall adapter into the
packaged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fslm_edge import Stack
from fslm_edge.config import load_target_config
from fslm_edge.convert.merged import merged_file, merged_overrides
from fslm_edge.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
RECALL = ROOT / "stacks" / "adapters" / "qa" / "recall" / "recall.lora.gguf"

TWO = f"""
[[stage]]
name = "recall"
adapter = "{RECALL}"
system = "You are a careful assistant who lists relevant facts."
template = "List two or three short facts that help answer this question.\\n\\nQuestion: {{input}}"
max_tokens = 12
temperature = 0.0

[[stage]]
name = "reply"
template = "{{input}}\\n\\nNotes: {{recall}}"
max_tokens = 6
temperature = 0.0
"""


@pytest.fixture(scope="module")
def bf16_path(smollm2_path, tmp_path_factory):
    from fslm_edge.engine.tools import quantize_file

    path = tmp_path_factory.mktemp("bf16") / "smollm2-bf16.gguf"
    assert quantize_file(smollm2_path, path, "bf16") == 0
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLM_EDGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "merged"


def _gaps_per_token(base: Path, merged_path: Path, questions: list[str]) -> list[float]:
    """For each question: the recall adapter's greedy text on ``base``, and how far apart (nats per
    token) ``base`` under the adapter and the merged file score it."""
    from fslm_edge.config import Sampling
    from fslm_edge.engine import Generation, LoadedModel, collect_text, stream_text
    from fslm_edge.engine.scoring import ChoiceScorer

    plain, merged = LoadedModel(base, 512, 1), LoadedModel(merged_path, 512, 1)
    gaps = []
    try:
        plain.add_adapter(RECALL)
        plain.use_adapter(RECALL, 1.0)
        for question in questions:
            chat = f"<|im_start|>user\nList facts about: {question}<|im_end|>\n<|im_start|>assistant\n"
            prompt = plain.tokenize(chat)
            text = collect_text(stream_text(plain, prompt, Generation(Sampling(max_tokens=12, temperature=0.0))))[0]
            tokens = plain.tokenize_plain(text)
            [under_adapter] = ChoiceScorer(plain).score(prompt, [tokens])
            [from_merged] = ChoiceScorer(merged).score(prompt, [tokens])
            gaps.append(abs(under_adapter.logprob - from_merged.logprob) / len(tokens))
    finally:
        plain.close()
        merged.close()
    return gaps


def test_a_merged_file_scores_what_the_base_under_its_adapter_scores(make_stack, cache, bf16_path):
    """On a BF16 copy of the base, the merged file gives the tokens the copy under the adapter writes
    nearly the same log-probabilities (the merged weights are rounded to BF16, the adapter's own product
    is not, so a near tie can go the other way)."""
    stack_file = make_stack(TWO, model=str(bf16_path))
    overrides = merged_overrides(load_target_config(stack_file), qtype="bf16")
    recall_file, reply_file = Path(overrides["recall.model"]), Path(overrides["reply.model"])
    assert recall_file.parent == cache and recall_file != reply_file and overrides["recall.adapter"] == ""
    manifest = json.loads(recall_file.with_name(recall_file.name + ".manifest.json").read_text())
    assert manifest["kind"] == "merged-bf16" and manifest["adapter"]["file"] == "recall.lora.gguf"
    questions = ["Why is the sky blue?", "How do bees make honey?", "What causes thunder?"]
    assert max(_gaps_per_token(bf16_path, recall_file, questions)) < 0.05
    with Stack.load(stack_file, {"stack.threads": 1, **overrides}) as stack:
        assert stack.stage_model("recall").path == recall_file
        assert stack.run("Why is the sky blue?").answer
    stamp = recall_file.stat().st_mtime_ns
    assert merged_overrides(load_target_config(stack_file), qtype="bf16") == overrides  # cached: not made again
    assert recall_file.stat().st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp files left


def test_another_scale_is_another_file(cache, smollm2_path):
    half = merged_file(smollm2_path, RECALL, 0.5)
    full = merged_file(smollm2_path, RECALL, 1.0)
    assert half != full and half.is_file() and full.is_file()


def test_serve_loads_every_stage_on_its_merged_file_with_a_decoder_each(make_stack, cache):
    from fslm_edge.server.main import load_models

    models = load_models([str(make_stack(TWO))], 1, {"stack.threads": 1}, 4, log=lambda m: None, parallel=2,
                         merge_adapters=True)
    try:
        [workers] = models.values()
        stack = workers.stacks[0]
        assert all(s.adapter is None for s in stack.config.stages)
        assert {Path(s.model).parent for s in stack.config.stages} == {cache}
        answer = stack.run("Why is the sky blue?")
        assert answer.answer and len(workers.decoders.decoders) == 2  # one decoder per stage's file
    finally:
        for loaded in models.values():
            loaded.close()


def test_q8_0_files_score_what_the_base_under_its_adapter_scores(make_stack, cache, smollm2_path):
    """Q8_0 merges, the adapter's file and the one for the stage without an adapter, each with its
    manifest; the merged recall file gives the adapter's own greedy text nearly the log-probability
    the packaged base under the adapter gives it."""
    from fslm_edge.ggufinfo import read_gguf_info

    overrides = merged_overrides(load_target_config(make_stack(TWO)))  # Q8_0 unless told
    recall_file, reply_file = Path(overrides["recall.model"]), Path(overrides["reply.model"])
    assert recall_file.name.endswith(".q8_0.gguf") and reply_file.name.endswith(".q8_0.gguf")
    for path in (recall_file, reply_file):
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        assert manifest["kind"] == "merged-q8_0"
        assert read_gguf_info(path).tensors["blk.0.attn_q.weight"].dtype == "Q8_0"
    assert max(_gaps_per_token(smollm2_path, recall_file, ["Why is the sky blue?"])) < 0.1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp files left


def test_an_unknown_merge_type_is_refused(cache, smollm2_path):
    with pytest.raises(InputError, match="q4_k_m"):
        merged_file(smollm2_path, RECALL, 1.0, qtype="q4_k_m")
    assert not cache.exists()


def test_serve_with_workers_on_q4_0_merged_files(make_stack, cache):
    from fslm_edge.server.main import load_models

    models = load_models([str(make_stack(TWO))], 2, {}, 4, log=lambda m: None, merge_adapters=True,
                         merge_type="q4_0")
    try:
        [workers] = models.values()
        assert len(workers.stacks) == 2
        for stack in workers.stacks:
            assert all(Path(s.model).name.endswith(".q4_0.gguf") and s.adapter is None for s in stack.config.stages)
            assert stack.config.n_threads == 1  # two workers on one thread each
        assert workers.stacks[1].run("Why is the sky blue?").answer
    finally:
        for loaded in models.values():
            loaded.close()
