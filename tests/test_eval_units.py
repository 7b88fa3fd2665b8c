"""Evaluation units without a model: extraction, data, tasks, statistics."""

from __future__ import annotations

import pytest

from eval_fixtures import MC_ROWS, YESNO_ROWS, write_jsonl
from fslm_edge.errors import DatasetError, InputError
from fslm_edge.evaluation.data import find_task_file, read_examples, select
from fslm_edge.evaluation.extract import extract_answer, extract_number, is_correct, normalize_number
from fslm_edge.evaluation.report import wilson
from fslm_edge.evaluation.tasks import TASKS, get_task


@pytest.mark.parametrize("text, expected", [
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = $18. The answer is 18.", "18"),
    ("so the total is\n#### 1,234", "1234"),
    ("First 3 then 7.", "7"),
    ("It costs $4.50 in all", "4.5"),
    ("The temperature fell to -5", "-5"),
    ("The answer is 12 but I said 13 later", "12"),
    ("no digits here", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_normalize_and_match():
    assert normalize_number("18.0") == "18" and normalize_number("abc") is None
    assert is_correct(extract_answer("I think the answer is 18.", "18"), "18")
    assert not is_correct(extract_answer("nothing", "18"), "18")
    assert extract_answer("Yes, because water is a liquid.", "yes") == "yes"
    assert is_correct(extract_answer("The Eiffel Tower.\nMore text", "the eiffel tower"), "the eiffel tower")


def test_discovery_falls_back_test_dev_validation(tmp_path):
    write_jsonl(tmp_path / "piqa_validation.jsonl", MC_ROWS)
    assert find_task_file(tmp_path, "piqa", "test").name == "piqa_validation.jsonl"
    write_jsonl(tmp_path / "piqa_dev.jsonl", MC_ROWS)
    assert find_task_file(tmp_path, "piqa", "test").name == "piqa_dev.jsonl"
    write_jsonl(tmp_path / "piqa_test.jsonl", MC_ROWS)
    assert find_task_file(tmp_path, "piqa", "test").name == "piqa_test.jsonl"
    assert find_task_file(tmp_path, "piqa", "validation").name == "piqa_validation.jsonl"
    with pytest.raises(DatasetError, match="boolq_test.jsonl"):
        find_task_file(tmp_path, "boolq", "test")


def test_bad_rows_named_with_file_and_line(tmp_path):
    rows = [MC_ROWS[0], {"id": "x", "question": "Q?", "choices": ["a", "b"], "answer": 5}, "{not json",
            {"id": "y", "choices": ["a", "b"], "answer": 0}, MC_ROWS[1]]
    path = write_jsonl(tmp_path / "arc_easy_test.jsonl", rows)
    with pytest.raises(DatasetError, match=r"arc_easy_test.jsonl:2: answer index 5 out of range"):
        read_examples(path, "mc")
    bad = []
    examples = read_examples(path, "mc", skip_bad=True, bad=bad)
    assert [e.id for e in examples] == ["t1", "t2"]
    assert [(b.line, b.reason.split(" ")[0]) for b in bad] == [(2, "answer"), (3, "not"), (4, "missing")]


def test_strategyqa_rows_become_yes_no_choices(tmp_path):
    path = write_jsonl(tmp_path / "strategyqa_dev.jsonl", YESNO_ROWS)
    examples = read_examples(path, "mc")
    assert [(e.choices, e.answer) for e in examples] == [(("yes", "no"), 0), (("yes", "no"), 1)]


def test_select_limit_and_seed(tmp_path):
    examples = read_examples(write_jsonl(tmp_path / "a_test.jsonl", MC_ROWS), "mc")
    assert [e.id for e in select(examples, 2, None)] == ["t1", "t2"]
    sample = select(examples, 2, 7)
    assert sample == select(examples, 2, 7) and len(sample) == 2
    assert select(examples, None, 3) == examples


def test_unknown_task_lists_known_ones():
    with pytest.raises(InputError) as info:
        get_task("arc_medium")
    for name in ("arc_easy", "gsm8k", "hellaswag", "winogrande", "mmlu", "boolq", "truthfulqa_mc1"):
        assert name in str(info.value)


def test_task_formats(tmp_path):
    ex = read_examples(write_jsonl(tmp_path / "x_test.jsonl", MC_ROWS), "mc")[0]
    assert TASKS["arc_easy"].requests(ex)[0] == ("Question: What color is the sky on a clear day?\nAnswer:", " blue")
    lettered = TASKS["arc_easy"].requests(ex, lettered=True)
    assert lettered[1][1] == " B" and "\nA. blue\nB. green\nC. purple\nD. brown\nAnswer:" in lettered[1][0]
    assert TASKS["arc_easy"].stack_input(ex).endswith("\nA. blue\nB. green\nC. purple\nD. brown")
    wino = read_examples(write_jsonl(tmp_path / "w_test.jsonl", [
        {"question": "The cup fell off the table because _ was wobbly.", "choices": ["the cup", "the table"],
         "answer": 1}]), "mc")[0]
    assert TASKS["winogrande"].requests(wino) == [("The cup fell off the table because the cup", " was wobbly."),
                                                  ("The cup fell off the table because the table", " was wobbly.")]


def test_wilson_interval():
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 0) == (0.0, 0.0)


def test_gold_explanations_never_reach_a_stack_or_model_prompt():
    from fslm_edge.evaluation.data import Example
    from fslm_edge.evaluation.tasks import custom_task, get_task

    row = Example(id="x", question="Where do fish live?", choices=("water", "trees"), answer=0,
                  context="Fish live in water because they breathe with gills.")
    task = get_task("commonsenseqa")
    assert "gills" not in task.stack_input(row)
    assert all("gills" not in context for context, _ in task.requests(row))
    assert "gills" in custom_task("mine", "mc").stack_input(row)  # user data: context is a passage


def test_table_shows_a_targets_settings_not_as_markup():
    from rich.console import Console

    from fslm_edge.evaluation.report import Summary, render_table

    targets = ["stacks/qa.toml", "stacks/qa.toml[answer.adapter_scale=0]"]
    summaries = [Summary(t, "arc_easy", "acc_norm", 10, 0.5, (0.2, 0.8), {}, 3.0, 0.5) for t in targets]
    console = Console(width=200, record=True)
    console.print(render_table(summaries, targets, ["arc_easy"]))
    assert "stacks/qa.toml[answer.adapter_scale=0]" in console.export_text()
