"""``fslm-edge distill``: a stage's text written by a teacher for each task row,
kept where it leads the rest of the stack to the gold answer (STaR's filter),
with a manifest and a resumable log; and the ``given``/``through`` stack calls
it is built on. Real inference on the packaged SmolLM2 model, short outputs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fslm_edge import Stack
from fslm_edge.cli import main
from fslm_edge.convert.data import find_data_file
from fslm_edge.convert.distill import DistillOptions, distill, samples_path
from fslm_edge.errors import DatasetError, InputError

STACK = """
[[stage]]
name = "hint"
template = "Name one fact that helps answer: {question}"
max_tokens = 8
temperature = 0.0

[[stage]]
name = "pick"
chat = false
template = \"\"\"Question: {question}
Fact: {hint}
Answer:\"\"\"
when = "lettered"
choices_from_input = true
choices_by = "total"
max_tokens = 8

[[stage]]
name = "yes_no"
chat = false
template = \"\"\"Question: {question}
Fact: {hint}
Answer:\"\"\"
when = "yes_no"
choices_from_input = true
choices_by = "total"
max_tokens = 4
"""

ROWS = [  # written for these tests, in the data folder's multiple-choice schema
    {"id": "q1", "question": "What do cows drink?", "choices": ["water", "gasoline", "lava"], "answer": 0},
    {"id": "q2", "question": "Which is a planet?", "choices": ["Mars", "a spoon", "a chair"], "answer": 0},
    {"id": "q3", "question": "What melts in the sun?", "choices": ["ice", "a rock", "iron"], "answer": 0},
]


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "arc_easy_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    yes_no = [{"id": "s1", "question": "Is water wet?", "answer": "yes", "facts": ["Water is a liquid."],
               "decomposition": []}]
    (folder / "strategyqa_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in yes_no))
    return folder


def options(data_dir, **kw) -> DistillOptions:
    return DistillOptions(**{"stage": "hint", "tasks": ("arc_easy",), "data_dir": data_dir, "samples": 2,
                             "threads": 1, **kw})


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_given_and_through_run_part_of_a_stack(make_stack):
    typed = "What do cows drink?\nA. water\nB. gasoline\nC. lava\nAnswer with the letter of the correct option."
    with Stack.load(make_stack(STACK)) as stack:
        whole = stack.run(typed)
        first = stack.run(typed, through="hint")
        assert [s.name for s in first.stages] == ["hint"]
        assert first.answer == whole.stages[0].text  # the cut stage is the final one
        given = stack.run(typed, given={"hint": "Cows drink water every day."})
        assert given.stages[0].text == "Cows drink water every day."
        assert given.stages[0].stats.stop_reason == "given"
        assert "Fact: Cows drink water every day." in given.stages[1].prompt
        assert given.answer in ("water", "gasoline", "lava")
        with pytest.raises(InputError, match="through = 'yes_no' does not run"):
            stack.run(typed, through="yes_no")
        with pytest.raises(InputError, match="unknown stage 'nope'"):
            stack.run(typed, given={"nope": "x"})


def test_distill_keeps_texts_that_lead_to_the_gold_answer(make_stack, data_dir, tmp_path):
    stack_file, out = make_stack(STACK), tmp_path / "hint.jsonl"
    report = distill(stack_file, out, options(data_dir, tasks=("arc_easy", "strategyqa"), keep="all"))
    assert (report.rows, report.samples) == (4, 8)
    rows = read(out)
    log = read(samples_path(out))[1:]
    assert len(log) == 4 and all(len(r["samples"]) == 2 for r in log)
    with Stack.load(stack_file, {"stack.threads": 1}) as stack:
        for record in log:  # sample 1 is what the stage writes greedily; verdicts are the stack's own
            greedy = stack.run(record["input"], through="hint").answer
            assert record["samples"][0]["text"] == greedy
            printed = stack.run(record["input"], given={"hint": greedy}).answer
            assert record["samples"][0]["printed"] == printed
            assert record["samples"][0]["correct"] == (printed == record["choices"][record["answer"]])
    assert rows and all(set(r) >= {"id", "task", "input", "question", "choices", "answer", "hint", "sample",
                                   "printed", "correct", "correct_without"} for r in rows)
    assert {r["task"] for r in rows} == {"arc_easy", "strategyqa"}
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["kind"] == "distilled-stage-data" and manifest["stage"] == "hint"
    assert manifest["teacher"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and manifest["teacher"]["sha256"]
    assert set(manifest["data"]) == {"arc_easy_train.jsonl", "strategyqa_train.jsonl"}
    assert manifest["counts"]["kept"] == len(rows)
    # refiltered from the log, nothing generated: only the texts that led to the gold answer
    again = distill(stack_file, out, options(data_dir, tasks=("arc_easy", "strategyqa"), keep="correct",
                                             resume=True))
    assert again.resumed == 4
    kept = read(out)
    assert all(r["correct"] for r in kept)
    assert len(kept) == len({(r["id"], r["hint"]) for r in rows if r["correct"]})
    # another file from the same log: only where the text made the answer right
    helpful = tmp_path / "helpful.jsonl"
    distill(stack_file, helpful, options(data_dir, tasks=("arc_easy", "strategyqa"), keep="helpful", resume=True,
                                         samples_log=samples_path(out)))
    assert read(helpful) == [r for r in kept if not r["correct_without"]]
    assert not samples_path(helpful).exists()


def test_an_interrupted_distill_resumes_and_leaves_no_output(make_stack, data_dir, tmp_path):
    stack_file, out = make_stack(STACK), tmp_path / "hint.jsonl"

    def interrupt(report, total):
        if report.rows == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(stack_file, out, options(data_dir), interrupt)
    assert not out.exists() and not out.with_name(out.name + ".manifest.json").exists()
    assert len(read(samples_path(out))) == 2  # the settings line and the finished row
    with pytest.raises(InputError, match="--resume"):
        distill(stack_file, out, options(data_dir))
    with pytest.raises(InputError, match="other settings"):
        distill(stack_file, out, options(data_dir, samples=3, resume=True))
    with samples_path(out).open("a") as log:  # a hostile or torn line is distilled again, not trusted
        log.write(json.dumps({"key": "arc_easy:x", "upstream": {}, "samples": "not a list"}) + "\n{\"key\": ")
    report = distill(stack_file, out, options(data_dir, resume=True))
    assert (report.resumed, report.rows) == (1, 3)
    assert out.exists()


def test_a_teacher_model_writes_the_stage_without_its_adapter(make_stack, data_dir, tmp_path, adapters):
    body = STACK.replace('max_tokens = 8\ntemperature = 0.0', f'max_tokens = 8\ntemperature = 0.0\n'
                         f'adapter = "{adapters["a"]}"', 1)
    out = tmp_path / "t.jsonl"
    distill(make_stack(body), out, options(data_dir, teacher="builtin:smollm2-135m-instruct", samples=1,
                                           keep="all"))
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["teacher"]["model"] == "builtin:smollm2-135m-instruct"
    assert manifest["teacher"]["adapter"] is None
    with Stack.load(make_stack(STACK), {"stack.threads": 1}) as plain:  # no adapter: the base model's text
        for row in read(out):
            assert row["hint"] == plain.run(row["input"], through="hint").answer


def test_distill_cli_errors_are_one_line(make_stack, data_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["distill", str(make_stack(STACK)), "--stage", "nope", "--task", "arc_easy",
                                  "--data-dir", str(data_dir), "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2
    assert "no stage 'nope'" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["distill", str(make_stack(STACK)), "--stage", "hint", "--task", "arc_easy",
                                  "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_recipe_files_are_taken_from_the_first_data_dir_that_has_them(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "x.jsonl").write_text("{}\n")
    (first / "y.jsonl").write_text("{}\n")
    (second / "y.jsonl").write_text("{}\n")
    assert find_data_file("x.jsonl", [first, second], "s") == second / "x.jsonl"
    assert find_data_file("y.jsonl", [first, second], "s") == first / "y.jsonl"
    with pytest.raises(DatasetError, match="z.jsonl in"):
        find_data_file("z.jsonl", [first, second], "s")


def test_a_stack_with_settings_is_its_own_teacher(make_stack, data_dir, tmp_path):
    """``'stack.toml[hint.max_tokens=3]'``: the settings decide the texts and are in the manifest."""
    stack_file, out = make_stack(STACK), tmp_path / "short.jsonl"
    ref = f"{stack_file}[hint.max_tokens=3]"
    distill(ref, out, options(data_dir, samples=1, keep="all"))
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["stack"]["ref"] == ref and manifest["stack"]["file"] == stack_file.name
    with Stack.load(ref, {"stack.threads": 1}) as short:
        for row in read(out):
            assert row["hint"] == short.run(row["input"], through="hint").answer
    with pytest.raises(InputError, match="other settings"):  # the plain stack is another teacher
        distill(stack_file, out, options(data_dir, samples=1, keep="all", resume=True))


def test_without_tasks_the_teacher_writes_for_the_stages_own_recipe_inputs(make_stack, tmp_path):
    """The FSLM paper's distillation: a teacher writes the stage's text for the inputs its recipe trains
    on; every text is kept (there is no gold answer to judge it by), and a recipe reads the file back."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"t{i}", "instruction": topic, "output": "x"} for i, topic in enumerate(["cats", "rain", "tea"])]
    (data / "topics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = STACK.replace('''max_tokens = 8
temperature = 0.0
''', '''max_tokens = 8
temperature = 0.0

[stage.train]
data = [{ file = "topics.jsonl", target = "output", fields = { input = "instruction" } }]
''', 1)
    stack_file, out = make_stack(body), tmp_path / "hints.jsonl"
    with pytest.raises(InputError, match="--keep correct judges"):
        distill(stack_file, out, options(data, tasks=(), samples=1))
    report = distill(stack_file, out, options(data, tasks=(), samples=1, keep="all", limit=2))
    assert report.rows == 2
    got = read(out)
    assert [r["task"] for r in got] == ["topics.jsonl"] * 2 and {r["input"] for r in got} < {"cats", "rain", "tea"}
    assert all("correct" not in r for r in got)
    with Stack.load(stack_file, {"stack.threads": 1}) as stack:
        for row in got:
            assert row["hint"] == stack.run(row["input"], through="hint").answer
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["inputs"] == "the stage's recipe" and list(manifest["data"]) == ["topics.jsonl"]
    result = CliRunner().invoke(main, ["distill", str(stack_file), "--stage", "pick", "--data-dir", str(data),
                                       "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 2 and "no [stage.train] recipe" in result.output
