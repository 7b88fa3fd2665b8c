"""Continuous batching (engine.batch): many threads' generations decoded together.

On F16 weights (a copy of the packaged SmolLM2 made by llama.cpp's quantizer)
a batched greedy generation is the one the model makes alone; the packaged
Q4_1 file rounds differently by batch shape, so there only the contract is
checked (engine/scoring.py's docstring).
"""

from __future__ import annotations

import threading

import pytest

from fslm_edge.config import Sampling
from fslm_edge.engine import BatchedDecoder, ClosedModelError, DecoderPool, Generation, LoadedModel, collect_text
from fslm_edge.engine import stream_text
from fslm_edge.engine.constraints import choices_grammar
from fslm_edge.engine.tools import quantize_file
from fslm_edge.errors import ContextOverflowError
from fslm_edge.stack import Stack

PROMPTS = ["Why is the sky blue?", "Name three fruits.", "What is 2+2?", "Write a haiku about rain."]


def chat(model: LoadedModel, question: str) -> list[int]:
    return model.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def f16_path(smollm2_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf"
    assert quantize_file(smollm2_path, path, "f16") == 0
    return path


def run_threads(jobs):
    """Run each job on its own thread at once; their results in order."""
    results: list = [None] * len(jobs)
    errors: list = []

    def work(i, job):
        try:
            results[i] = job()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_batched_generations_are_the_lone_ones_and_share_decodes(f16_path, adapters):
    """Four threads, two under an adapter (a random one, at a scale that keeps
    the text readable: no two tokens nearly tied) and two without: each gets
    what its model writes alone, and the decodes held several sequences."""
    request = Generation(Sampling(max_tokens=24, temperature=0.0))
    alone = LoadedModel(f16_path, 1024, 1)
    alone.add_adapter(adapters["a"])
    expected = []
    for i, question in enumerate(PROMPTS):
        alone.use_adapter(adapters["a"] if i % 2 else None, 0.05)
        expected.append(collect_text(stream_text(alone, chat(alone, question), request))[0])
    alone.close()

    decoders = DecoderPool(slots=4, n_ctx=1024, n_threads=1)
    users = [LoadedModel(f16_path, 1024, 1) for _ in PROMPTS]
    try:
        for i, user in enumerate(users):
            user.decoder = decoders.get(f16_path)
            user.add_adapter(adapters["a"])
            user.use_adapter(adapters["a"] if i % 2 else None, 0.05)
        got = run_threads([lambda u=u, q=q: collect_text(stream_text(u, chat(u, q), request))[0]
                           for u, q in zip(users, PROMPTS)])
        decoder = decoders.get(f16_path)
        assert got == expected
        assert decoder.max_rows >= 2  # sequences shared a decode
        assert decoder.steps < 4 * 24  # fewer decodes than one at a time
    finally:
        for user in users:
            user.close()
        decoders.close()


def test_more_requests_than_slots_wait_and_all_finish(f16_path):
    # F16: on the packaged Q4_1 file a near tie can round the other way in other company (module docstring)
    decoder = BatchedDecoder(f16_path, 512, 1, slots=2)
    try:
        sampling = Sampling(max_tokens=6, temperature=0.0)
        model = decoder.model
        outputs = run_threads([lambda q=q: list(decoder.generate(chat(model, q), sampling)) for q in PROMPTS * 2])
        assert all(0 < len(tokens) <= 6 for tokens in outputs)
        assert outputs[:4] == outputs[4:]  # the same question gets the same tokens in any company
        assert decoder.max_rows <= 2
    finally:
        decoder.close()


def test_cancel_and_a_reader_that_leaves_free_the_slot(smollm2_path):
    decoder = BatchedDecoder(smollm2_path, 512, 1, slots=1)
    try:
        model = decoder.model
        cancel = threading.Event()
        tokens = []
        for token in decoder.generate(chat(model, PROMPTS[0]), Sampling(max_tokens=200, temperature=0.0), cancel):
            tokens.append(token)
            cancel.set()
        assert len(tokens) <= 2  # stopped within a token
        stream = decoder.generate(chat(model, PROMPTS[1]), Sampling(max_tokens=200, temperature=0.0))
        next(stream)
        stream.close()  # the reader leaves (a stop string was found)
        # the one slot is free again for the next generation
        assert list(decoder.generate(chat(model, PROMPTS[2]), Sampling(max_tokens=3, temperature=0.0)))
    finally:
        decoder.close()


def test_grammar_banned_first_tokens_and_overflow(smollm2_path):
    decoder = BatchedDecoder(smollm2_path, 256, 1, slots=2)
    try:
        model = decoder.model
        choices = ["red", "green", "blue"]
        request = Generation(Sampling(max_tokens=8, temperature=0.0), grammar=choices_grammar(choices))
        user = LoadedModel(smollm2_path, 256, 1)
        user.decoder = decoder
        texts = run_threads([lambda q=q: collect_text(stream_text(user, chat(user, q), request))[0]
                             for q in ("What color is the sky?", "What color is grass?")])
        assert all(text in choices for text in texts)
        digits = model.digit_tokens()
        prompt = model.tokenize("The number of legs of a spider is ")
        first = next(decoder.generate(prompt, Sampling(max_tokens=1, temperature=0.0), first_banned=digits))
        assert first not in set(digits.tolist())
        with pytest.raises(ContextOverflowError):
            next(decoder.generate([1] * 256, Sampling(max_tokens=1)))
        user.close()
    finally:
        decoder.close()


def test_close_ends_generations_under_way(smollm2_path):
    decoder = BatchedDecoder(smollm2_path, 512, 1, slots=2)
    stream = decoder.generate(chat(decoder.model, PROMPTS[0]), Sampling(max_tokens=400, temperature=0.0))
    next(stream)
    closer = threading.Thread(target=decoder.close)
    closer.start()
    with pytest.raises(ClosedModelError):
        for _ in stream:
            pass
    closer.join(30)
    with pytest.raises(ClosedModelError):
        next(decoder.generate([1, 2, 3], Sampling(max_tokens=1)))


def test_stacks_sharing_a_decoder_answer_as_one_stack_does(f16_path, make_stack):
    """Two stages (the second reads the first) on F16 weights: stacks sharing
    one decoder pool answer four questions at once as a lone stack does."""
    path = make_stack(f"""
        [[stage]]
        name = "draft"
        model = "{f16_path}"
        template = "{{input}}"
        max_tokens = 12
        temperature = 0.0

        [[stage]]
        name = "final"
        model = "{f16_path}"
        template = "Rewrite in one short sentence: {{draft}}"
        max_tokens = 12
        temperature = 0.0
    """)
    with Stack.load(path) as lone:
        expected = [lone.run(q).answer for q in PROMPTS]
    decoders = DecoderPool(slots=4, n_ctx=1024, n_threads=1)
    stacks = [Stack.load(path, decoders=decoders) for _ in PROMPTS]
    try:
        got = run_threads([lambda s=s, q=q: s.run(q).answer for s, q in zip(stacks, PROMPTS)])
        assert got == expected
        assert decoders.get(f16_path).max_rows >= 2
    finally:
        for stack in stacks:
            stack.close()
        decoders.close()


def test_scoring_on_a_decoders_file_runs_between_its_decodes(f16_path):
    """Option scoring on a load whose generations go through a decoder runs on
    the decoder's scheduler thread (never at the same time as a decode, whose
    threads it would fight for the cores), with the figures it has alone."""
    from fslm_edge.engine.scoring import ChoiceScorer

    alone = LoadedModel(f16_path, 1024, 1)
    context = chat(alone, "What color is the sky?")
    options = [alone.tokenize_plain(" blue"), alone.tokenize_plain(" green, like grass")]
    # three times: the later calls reuse the cached context, which rounds a little differently
    expected = [[s.logprob for s in ChoiceScorer(alone).score(context, options)] for _ in range(3)]
    alone.close()
    decoders = DecoderPool(slots=2, n_ctx=1024, n_threads=1)
    scorer_user, writer = LoadedModel(f16_path, 1024, 1), LoadedModel(f16_path, 1024, 1)
    try:
        decoder = decoders.get(f16_path)
        scorer_user.decoder = writer.decoder = decoder
        seen = []
        scorer_user.exclusive(lambda: seen.append(threading.current_thread().name))
        assert seen == ["fslm-edge batch decoder"]
        request = Generation(Sampling(max_tokens=32, temperature=0.0))
        text, scores = run_threads([
            lambda: collect_text(stream_text(writer, chat(writer, PROMPTS[0]), request))[0],
            lambda: [[s.logprob for s in ChoiceScorer(scorer_user).score(context, options)] for _ in range(3)]])
        assert text
        assert scores == expected
        with pytest.raises(ZeroDivisionError):  # what the work raises reaches the caller
            scorer_user.exclusive(lambda: 1 / 0)
    finally:
        scorer_user.close()
        writer.close()
        decoders.close()
    with pytest.raises(ClosedModelError):
        decoder.run_between_steps(lambda: None)
