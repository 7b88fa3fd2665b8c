"""Build toolchain edge cases: bad rows, empty data, no recipe, mixing and
field mapping, exact resume after an interruption, unwritable output, CLI."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from build_fixtures import QA_ROWS, write_jsonl, write_stack  # noqa: E402

from fslm_edge.errors import DatasetError, InputError  # noqa: E402

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("build_cache")

DATA = '{ file = "qa.jsonl", target = "answer", fields = { input = "question" } }'




def _options(tmp_path, **kw):
    from fslm_edge.convert.build import BuildOptions

    return BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", progress=False, **kw)


def _build(stack, options):
    from fslm_edge.convert.build import build_stack

    return list(build_stack(stack, options))


def _stage_data(stack_path, data_dir, model):
    from fslm_edge.convert.data import GGUFTokenizer, load_stage_data
    from fslm_edge.config import load_stack_config

    stage = load_stack_config(stack_path).stages[0]
    with GGUFTokenizer(model) as tok:
        return load_stage_data(stage, data_dir, tok), tok.end_id


def test_bad_json_row_names_file_and_line(tiny, tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:3] + ["{not json"])
    with pytest.raises(DatasetError, match=r"qa\.jsonl:4: not valid JSON"):
        _build(write_stack(tmp_path, tiny, DATA), _options(tmp_path, max_steps=1))


def test_missing_field_names_file_line_and_field(tiny, tmp_path):
    rows = QA_ROWS[:5] + [{"question": "no answer here"}] + QA_ROWS[5:8]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(DatasetError, match=r"qa\.jsonl:6: no field 'answer'"):
        _build(write_stack(tmp_path, tiny, DATA), _options(tmp_path, max_steps=1))


def test_empty_dataset(tiny, tmp_path):
    (tmp_path / "qa.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        _build(write_stack(tmp_path, tiny, DATA), _options(tmp_path, max_steps=1))


def test_stage_without_recipe(tiny, tmp_path):
    stack = tmp_path / "s.toml"
    stack.write_text(f'[stack]\nname = "x"\nmodel = "{tiny}"\n\n[[stage]]\nname = "a"\ntemplate = "{{input}}"\n')
    with pytest.raises(InputError, match="no stage of s.toml has a \\[stage.train\\] recipe"):
        _build(stack, _options(tmp_path))
    with pytest.raises(InputError, match="stage 'a' has no \\[stage.train\\] recipe"):
        _build(stack, _options(tmp_path, stage="a"))


def test_unmapped_template_field_is_an_input_error(tiny, tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    stack = tmp_path / "s.toml"
    stack.write_text(f'''[stack]
name = "x"
model = "{tiny}"

[[stage]]
name = "recall"
template = "{{input}}"

[[stage]]
name = "b"
template = "{{input}} {{recall}}"

[stage.train]
data = [{DATA}]
''')
    with pytest.raises(InputError, match=r"data\[0\] \(qa.jsonl\) maps no row field to template field\(s\) \{recall\}"):
        _build(stack, _options(tmp_path, stage="b"))


def test_question_and_options_come_from_the_input(tiny, tmp_path):
    """A template that reads {question} (the input without its lettered options) trains on rows that map
    only {input}: the fields are derived from it as at run time."""
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    text = write_stack(tmp_path, tiny, DATA).read_text()
    assert 'template = "Question: {input}"' in text
    (tmp_path / "s.toml").write_text(text.replace("{input}", "{question}"))
    [built] = _build(tmp_path / "s.toml", _options(tmp_path, max_steps=1))
    assert built.adapter.exists()


def test_mixture_weights_fields_lists_and_few_shot(tiny, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", QA_ROWS[:20])
    write_jsonl(tmp_path / "b.jsonl", [{"q": f"Say {i}", "facts": [f"fact {i}", "second"]} for i in range(20)])
    data = ('{ file = "a.jsonl", target = "answer", weight = 3.0 }, '
            '{ file = "b.jsonl", target = "facts", fields = { input = "q" }, weight = 1.0 }')
    stack = write_stack(tmp_path, tiny, data, extra="max_examples = 40\n")
    stage_data, end_id = _stage_data(stack, tmp_path, tiny)
    assert len(stage_data.train) == 40 and len(stage_data.val) == 4  # 10% of each file held out
    assert all(e.ids[-1] == end_id and e.n_target >= 2 for e in stage_data.train)
    from fslm_edge.convert.data import GGUFTokenizer

    with GGUFTokenizer(tiny) as tok:
        facts = tok.text_ids("fact 3\nsecond") + [end_id]
        texts = [tok.model.detokenize(list(e.ids)) for e in stage_data.train]
    n_b = sum("Say " in t for t in texts)
    assert 8 <= n_b <= 12, n_b  # weight 1 of 4 -> ~10 of 40
    assert any(list(e.ids[-len(facts):]) == facts for e in stage_data.train) or n_b
    assert any("fact" in t and "second" in t for t in texts)  # list field joined by newlines
    few = write_stack(tmp_path, tiny, data, extra="few_shot = 5\n", name="few.toml")
    assert len(_stage_data(few, tmp_path, tiny)[0].train) == 5


def test_prompt_is_the_runtime_prompt(tiny, tmp_path):
    """Training tokens = what the runtime feeds llama.cpp for the stage, then the target."""
    from fslm_edge.config import load_stack_config
    from fslm_edge.engine import LoadedModel
    from fslm_edge.prompts import stage_prompt

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:1] * 3)
    stack = write_stack(tmp_path, tiny, DATA, extra="val_fraction = 0.0\n")
    stage_data, end_id = _stage_data(stack, tmp_path, tiny)
    stage = load_stack_config(stack).stages[0]
    model = LoadedModel(tiny, n_ctx=256, n_threads=1)
    try:
        prompt = model.tokenize(stage_prompt(stage, {"input": QA_ROWS[0]["question"]}, model.chat_template))
        target = model.tokenize_plain(QA_ROWS[0]["answer"])
        assert model.is_eog(end_id)
    finally:
        model.close()
    example = stage_data.train[0]
    assert list(example.ids) == prompt + target + [end_id] and example.n_prompt == len(prompt)


def test_plain_prompt_target_is_tokenized_as_evaluation_scores_it(tiny, tmp_path):
    """chat = false, template ending "Answer:": the target is " <answer>" tokenized after the prompt,
    the same ids evaluation scores a choice with."""
    from fslm_edge.config import load_stack_config
    from fslm_edge.engine import LoadedModel
    from fslm_edge.engine.scoring import split_continuation
    from fslm_edge.formats import continuation
    from fslm_edge.prompts import stage_prompt

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:1] * 3)
    stack = write_stack(tmp_path, tiny, DATA, extra="val_fraction = 0.0\n")
    stack.write_text(stack.read_text().replace('template = "Question: {input}"',
                                               'chat = false\ntemplate = "Question: {input}\\nAnswer:"'))
    stage_data, end_id = _stage_data(stack, tmp_path, tiny)
    stage = load_stack_config(stack).stages[0]
    model = LoadedModel(tiny, n_ctx=256, n_threads=1)
    try:
        prompt_text = stage_prompt(stage, {"input": QA_ROWS[0]["question"]}, model.chat_template)
        assert prompt_text.text.endswith("\nAnswer:")
        prompt, target = split_continuation(model, prompt_text, continuation(prompt_text.text, QA_ROWS[0]["answer"]))
    finally:
        model.close()
    example = stage_data.train[0]
    assert list(example.ids) == prompt + target + [end_id] and example.n_prompt == len(prompt)


def test_packing_has_no_cross_talk_and_matches_unpacked_loss(tiny, tmp_path):
    import torch

    from fslm_edge.convert.gguf_torch import load_torch_base
    from fslm_edge.convert.packing import collate, collate_padded
    from fslm_edge.convert.train import target_loss

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:6])
    stage_data, end_id = _stage_data(write_stack(tmp_path, tiny, DATA, extra="val_fraction = 0.0\n"), tmp_path, tiny)
    model = load_torch_base(tiny)
    with torch.no_grad():
        packed_sum, packed_n = target_loss(model, collate(stage_data.train, [[0, 1, 2], [3, 4, 5]], end_id))
        single = [target_loss(model, collate(stage_data.train, [[i]], end_id)) for i in range(6)]
        padded = collate_padded(stage_data.train, list(range(6)), end_id)
        padded["position_ids"] = (padded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        padded_sum, _ = target_loss(model, padded)
    assert packed_n == sum(n for _, n in single)
    assert float(packed_sum) == pytest.approx(sum(float(s) for s, _ in single), rel=1e-4)
    assert float(padded_sum) == pytest.approx(float(packed_sum), rel=1e-4)


def test_interrupted_run_resumes_exactly(tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    stack = write_stack(tmp_path, tiny, DATA, extra="dropout = 0.1\n")
    [straight] = _build(stack, _options(tmp_path, max_steps=5))
    reference = load_file(str(straight.folder / "adapter" / "adapter_model.safetensors"))

    def interrupt(step, loss):
        if step == 4:  # after the checkpoint at step 4 (save_every = 2)
            raise KeyboardInterrupt

    from fslm_edge.convert.build import BuildOptions

    out = tmp_path / "again"
    opts = BuildOptions(data_dir=tmp_path, out_dir=out, progress=False, max_steps=5, on_step=interrupt)
    with pytest.raises(KeyboardInterrupt):
        _build(stack, opts)
    assert not (out / "answer" / "answer.lora.gguf").exists()
    [resumed] = _build(stack, BuildOptions(data_dir=tmp_path, out_dir=out, progress=False, max_steps=5, resume=True))
    assert resumed.steps == 5
    got = load_file(str(resumed.folder / "adapter" / "adapter_model.safetensors"))
    for name, tensor in reference.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    assert resumed.train_loss == straight.train_loss


def test_resume_with_another_recipe_is_refused(tiny, tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:12])
    stack = write_stack(tmp_path, tiny, DATA)
    _build(stack, _options(tmp_path, max_steps=2))
    with pytest.raises(InputError, match="another recipe"):
        _build(stack, _options(tmp_path, max_steps=3, resume=True))


def test_read_only_output_folder(tiny, tmp_path, monkeypatch):
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:12])
    stack = write_stack(tmp_path, tiny, DATA)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write to the output folder"):
        _build(stack, replace(_options(tmp_path, max_steps=1), out_dir=blocker / "out"))
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits: make the kernel's answer explicit
        import tempfile

        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(out):
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(InputError, match="cannot write to the output folder"):
            _build(stack, replace(_options(tmp_path, max_steps=1), out_dir=out))
    finally:
        out.chmod(0o700)
    assert list(out.iterdir()) == []


def test_failed_write_leaves_no_file(tiny, tmp_path, monkeypatch):
    """A disk-full style failure during the GGUF write leaves neither the file nor its temp."""
    import numpy as np

    from fslm_edge.convert.gguf_model import merge_to_gguf

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import gguf

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    from fslm_edge.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="no space left on device writing .*m.gguf"):
        merge_to_gguf(tiny, {"blk.0.attn_q.weight": (np.zeros((2, 64), np.float32), np.zeros((64, 2), np.float32))},
                      4.0, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_build_prints_stack_lines_and_errors_are_one_line(tiny, tmp_path):
    from click.testing import CliRunner

    from fslm_edge.cli import main

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:12])
    stack = write_stack(tmp_path, tiny, DATA)
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(stack), "--data-dir", str(tmp_path), "--max-steps", "1",
                                  "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert 'adapter = "o/answer/answer.lora.gguf"' in result.output
    adapter = tmp_path / "o" / "answer" / "adapter"
    result = runner.invoke(main, ["export-lora", str(adapter), "--base", str(tiny), "--out", str(tmp_path / "x.gguf")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["merge", str(tmp_path / "x.gguf"), "--base", str(tiny), "--out",
                                  str(tmp_path / "m.gguf")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["quantize", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "q.gguf"),
                                  "--type", "q4_0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "q.gguf.manifest.json").is_file()
    result = runner.invoke(main, ["export-lora", str(tmp_path), "--base", str(tiny), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "not a PEFT adapter folder" in result.output


def test_training_device_choice():
    import torch

    from fslm_edge.convert.train import training_device

    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="not a torch device"):
        training_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="sees no CUDA GPU; use --device cpu"):
            training_device("cuda")


def test_cli_build_device_without_gpu_is_one_line(tiny, tmp_path):
    import torch
    from click.testing import CliRunner

    from fslm_edge.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:12])
    stack = write_stack(tmp_path, tiny, DATA)
    result = CliRunner().invoke(main, ["build", str(stack), "--data-dir", str(tmp_path), "--max-steps", "1",
                                       "--out", str(tmp_path / "o"), "--no-progress", "--device", "cuda"])
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert "--device cuda" in result.output
