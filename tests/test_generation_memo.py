"""The generation memo: a greedy stage's text is generated once per (model,
adapter, prompt tokens, settings), so evaluating a variant that changes only a
later stage does not generate the earlier stages again."""

from __future__ import annotations

from fslm_edge import Stack
from fslm_edge.stagecache import GenerationMemo

TWO = """
[[stage]]
name = "recall"
template = "Name one fact about {input}."
max_tokens = 10
temperature = 0.0

[[stage]]
name = "answer"
template = "Fact: {recall}\\nIn three words, what is {input}?"
max_tokens = 8
temperature = 0.0
"""


def lines(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_greedy_stage_texts_are_generated_once(make_stack, tmp_path):
    path, memo_file = make_stack(TWO), tmp_path / "generations.jsonl"
    with Stack.load(path) as stack:
        stack.generation_memo = GenerationMemo(memo_file)
        first = stack.run("a cat")
        assert lines(memo_file) == 2
        again = stack.run("a cat")
        assert [s.text for s in again.stages] == [s.text for s in first.stages]
        assert [s.stats.generated_tokens for s in again.stages] == [s.stats.generated_tokens for s in first.stages]
        assert lines(memo_file) == 2  # nothing generated, nothing added
    # another later stage, the memo read back from its file: only the changed stage is generated
    with Stack.load(path, {"answer.max_tokens": 4}) as stack:
        stack.generation_memo = GenerationMemo(memo_file)
        changed = stack.run("a cat")
        assert changed.stages[0].text == first.stages[0].text
        assert lines(memo_file) == 3
    with Stack.load(path) as plain:  # what a run without the memo writes
        assert [s.text for s in plain.run("a cat").stages] == [s.text for s in first.stages]


def test_sampled_stages_are_not_remembered(make_stack, tmp_path):
    memo_file = tmp_path / "generations.jsonl"
    with Stack.load(make_stack(TWO.replace("temperature = 0.0", "temperature = 0.8\nseed = 3"))) as stack:
        stack.generation_memo = GenerationMemo(memo_file)
        stack.run("a cat")
    assert lines(memo_file) == 0
