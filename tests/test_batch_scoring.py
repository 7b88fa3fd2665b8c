"""BatchScorer: many questions' choices in one llama.cpp decode (real models)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from eval_fixtures import MC_ROWS, write_jsonl
from fslm_edge.cli import main
from fslm_edge.engine import LoadedModel
from fslm_edge.errors import ContextOverflowError
from fslm_edge.engine.scoring import BatchScorer, ChoiceScorer, split_continuation
from fslm_edge.evaluation.tasks import TASKS

ROWS = MC_ROWS + [
    {"id": "t5", "question": "What falls from clouds when it rains?", "choices": ["water", "sand"], "answer": 0},
    {"id": "t6", "question": "Which is the largest?", "choices": ["a mouse", "an elephant", "an ant"], "answer": 1},
]


def _requests(model) -> list:
    from fslm_edge.evaluation.data import parse_mc

    requests = []
    for number, row in enumerate(ROWS, start=1):
        pairs = [split_continuation(model, c, k) for c, k in TASKS["arc_easy"].requests(parse_mc(row, number, "t"))]
        requests.append((pairs[0][0], [cont for _, cont in pairs]))
    return requests


@pytest.fixture(scope="module")
def tiny_model(tiny):
    model = LoadedModel(tiny, 512, 1, 512)  # F32 weights: every kernel path agrees closely
    yield model
    model.close()


def test_batches_match_scoring_each_choice_from_scratch(tiny_model):
    requests = _requests(tiny_model)
    naive = [ChoiceScorer(tiny_model).score_naive(context, conts) for context, conts in requests]
    # A small context and sequence budget: the six questions need several groups.
    scorer = BatchScorer(tiny_model, n_threads=1, max_sequences=8, n_ctx=128)
    try:
        batched = scorer.score_many(requests)
        again = scorer.score_many(requests[::-1])[::-1]  # the cache is emptied between groups
    finally:
        scorer.close()
    assert [len(scores) for scores in batched] == [4, 4, 4, 4, 2, 3]
    for want, got, got_again in zip(naive, batched, again):
        for a, b, c in zip(want, got, got_again):
            assert b.logprob == pytest.approx(a.logprob, abs=1e-3)
            assert c.logprob == pytest.approx(a.logprob, abs=1e-3)
            assert (b.n_tokens, b.greedy) == (a.n_tokens, a.greedy)


def test_a_request_larger_than_the_context_is_refused(tiny_model):
    scorer = BatchScorer(tiny_model, n_threads=1, max_sequences=4, n_ctx=16)
    try:
        with pytest.raises(ContextOverflowError, match="needs"):
            scorer.score_many([(list(range(10, 30)), [[5], [6]])])
    finally:
        scorer.close()


def test_cli_batch_scores_every_question_in_order_and_resumes(tmp_path):
    data = write_jsonl(tmp_path / "data" / "arc_easy_test.jsonl", ROWS)
    out, cache = tmp_path / "r.json", tmp_path / "cache"
    common = ["eval", "builtin:smollm2-135m-instruct", "--data-dir", str(data.parent), "--out", str(out),
              "--cache-dir", str(cache), "--threads", "1", "--task", "arc_easy"]
    one = CliRunner().invoke(main, common + ["--limit", "3"] + ["--batch", "4"], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    runner = CliRunner().invoke(main, common + ["--batch", "4"], catch_exceptions=False)
    assert runner.exit_code == 0, runner.output
    payload = json.loads(out.read_text())
    examples = payload["results"][0]["examples"]
    assert [e["id"] for e in examples] == [r["id"] for r in ROWS]
    assert [e["cached"] for e in examples] == [True, True, True, False, False, False]
    assert payload["settings"]["batch"] == 4
    unbatched = CliRunner().invoke(main, common[:-2] + ["--task", "arc_easy", "--no-cache", "--out",
                                                        str(tmp_path / "one.json")], catch_exceptions=False)
    assert unbatched.exit_code == 0, unbatched.output
    reference = json.loads((tmp_path / "one.json").read_text())["results"][0]["examples"]
    # Q4_1 kernels round differently in a large batch; same choices, close figures.
    for a, b in zip(examples, reference):
        assert a["pred"] == b["pred"]
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=0.5)
