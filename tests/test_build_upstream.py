"""A later stage trained on the earlier stages' own outputs (``"@model"``
fields): the runtime's stack generates them, they are cached, and they are
exactly the text the runtime hands the stage at run time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from build_fixtures import QA_ROWS, write_jsonl  # noqa: E402

from fslm_edge.errors import InputError  # noqa: E402

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("build_cache")




def _two_stage_stack(folder: Path, model: Path, recall_field: str = "@model") -> Path:
    path = folder / "two.toml"
    path.write_text(f'''[stack]
name = "two"
model = "{model}"
context_size = 512

[[stage]]
name = "recall"
template = "Facts for: {{input}}"
max_tokens = 6

[stage.train]
data = [{{ file = "qa.jsonl", target = "facts", fields = {{ input = "question" }} }}]
max_seq_len = 128
batch_tokens = 256
val_fraction = 0.1

[[stage]]
name = "answer"
template = "Q: {{input}}\\nFacts: {{recall}}"
max_tokens = 4

[stage.train]
data = [{{ file = "qa.jsonl", target = "answer", fields = {{ input = "question", recall = "{recall_field}" }} }}]
max_examples = 12
max_seq_len = 160
batch_tokens = 320
val_fraction = 0.1
val_examples = 2
''')
    return path


def test_model_fields_are_the_earlier_stages_real_outputs(tiny, tmp_path):
    from fslm_edge.convert.build import BuildOptions, build_stack
    from fslm_edge.convert.data import GGUFTokenizer
    from fslm_edge.config import load_stack_config
    from fslm_edge.stack import Stack

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:20])
    stack_path = _two_stage_stack(tmp_path, tiny)
    options = BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", progress=False, max_steps=1)
    built = {a.stage: a for a in build_stack(stack_path, options)}
    cache = tmp_path / "out" / "answer" / "upstream.jsonl"
    lines = cache.read_text().splitlines()
    assert 1 <= len(lines) <= 14  # one per distinct training/validation row, not more

    # The text the answer stage was trained to read is what the runtime gives it, recall adapter active.
    from fslm_edge.convert.data import load_stage_data
    from fslm_edge.convert.upstream import UpstreamOutputs

    config = load_stack_config(stack_path)
    answer = config.stage("answer")
    adapters = {"recall": built["recall"].adapter}
    with GGUFTokenizer(tiny) as tok, UpstreamOutputs(config, answer, cache, adapters) as upstream:
        data = load_stage_data(answer, tmp_path, tok, upstream)
        assert upstream.generated == 0  # every row came from the cache
        first = tok.model.detokenize(list(data.train[0].ids[: data.train[0].n_prompt]))
    question = first.split("Q: ", 1)[1].split("\n", 1)[0]
    with Stack.load(stack_path, {"recall.adapter": str(adapters["recall"])}) as stack:
        recall_text = stack.run(question).stages[0].text
    assert f"Facts: {recall_text}" in first


def test_model_field_must_name_an_earlier_stage(tiny, tmp_path):
    from fslm_edge.convert.build import BuildOptions, build_stack

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:10])
    stack_path = _two_stage_stack(tmp_path, tiny)
    text = stack_path.read_text().replace('input = "question", recall = "@model"', 'input = "@model", recall = "facts"')
    stack_path.write_text(text)
    options = BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", progress=False, max_steps=1,
                           stage="answer")
    with pytest.raises(InputError, match="'@model' fills only the output of an earlier stage"):
        list(build_stack(stack_path, options))


def test_yes_no_rows_are_multiple_choice_for_training_too():
    from fslm_edge.evaluation.data import parse_mc
    from fslm_edge.evaluation.tasks import get_task
    from fslm_edge.formats import derived_field

    row = {"question": "Is the sea salty?", "answer": "yes", "facts": ["It is."]}
    example = parse_mc(row, 1, "strategyqa")
    assert derived_field(row, "question_with_choices") == get_task("strategyqa").stack_input(example)
    assert derived_field(row, "answer_text") == "yes" and derived_field(row, "answer_letter") == "A"


def test_union_adapter_has_every_stages_data_and_their_steps(tiny, tmp_path):
    from fslm_edge.convert.build import BuildOptions
    from fslm_edge.convert.union import build_union
    from fslm_edge.stack import Stack

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:20])
    stack_path = _two_stage_stack(tmp_path, tiny)
    options = BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", progress=False, max_steps=2)
    union = build_union(stack_path, options)
    assert union.steps == 4 and union.adapter.name == "union.lora.gguf"  # 2 steps for each of 2 stages
    import json

    manifest = json.loads(union.adapter.with_name("union.lora.gguf.manifest.json").read_text())
    assert manifest["union_of"] == ["recall", "answer"] and manifest["kind"] == "lora-adapter-union"
    with Stack.load(stack_path, {"*.adapter": str(union.adapter)}) as stack:
        result = stack.run("What is 2 plus 3?")
    assert [s.name for s in result.stages] == ["recall", "answer"]


def test_a_recipe_trains_on_what_distill_wrote(tiny, tmp_path):
    """``fslm-edge distill`` writes a stage's text for each row; a later recipe names that file (found in a
    second --data-dir) and the stage is trained on exactly those texts."""
    import json

    from fslm_edge.convert.build import BuildOptions, build_stack
    from fslm_edge.convert.data import GGUFTokenizer, load_stage_data
    from fslm_edge.convert.distill import DistillOptions, distill
    from fslm_edge.config import load_stack_config

    data, distilled = tmp_path / "data", tmp_path / "distilled"
    data.mkdir()
    distilled.mkdir()
    write_jsonl(data / "qa.jsonl", QA_ROWS[:6])
    stack_path = _two_stage_stack(tmp_path, tiny)
    out = distilled / "recall.jsonl"
    distill(stack_path, out, DistillOptions("recall", (), data, keep="all", threads=1))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) >= {"input", "recall", "sample"} for r in rows)
    text = stack_path.read_text().replace(
        '{ file = "qa.jsonl", target = "facts", fields = { input = "question" } }',
        '{ file = "recall.jsonl", target = "recall", fields = { input = "input" } }')
    stack_path.write_text(text)
    config = load_stack_config(stack_path)
    with GGUFTokenizer(tiny) as tokenizer:
        stage_data = load_stage_data(config.stage("recall"), [data, distilled], tokenizer)
        targets = {tuple(e.ids[e.n_prompt:-1]) for e in stage_data.train + stage_data.val}
        assert targets <= {tuple(tokenizer.text_ids(r["recall"])) for r in rows}
    options = BuildOptions(data_dir=(data, distilled), out_dir=tmp_path / "out", progress=False, max_steps=1,
                           stage="recall")
    [built] = list(build_stack(stack_path, options))
    assert built.adapter.exists()
