"""Threads and native lifetimes: concurrent loads keep stdout and stderr,
close() cancels running and waiting questions, use after close is an error."""

import os
import threading

import pytest

from fslm_edge import InputError, Stack
from fslm_edge.engine import ClosedModelError, LoadedModel
from fslm_edge.engine.scoring import BatchScorer


def _fd_identity(fd):
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def test_concurrent_loads_leave_stdout_and_stderr_where_they_were(make_stack):
    path = make_stack('''
        [[stage]]
        name = "answer"
        template = "{input}"
        max_tokens = 2
    ''', threads=1)
    before = _fd_identity(1), _fd_identity(2)
    stacks, errors = [], []

    def load():
        try:
            stacks.append(Stack.load(path))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors
        assert (_fd_identity(1), _fd_identity(2)) == before
    finally:
        for stack in stacks:
            stack.close()
    assert (_fd_identity(1), _fd_identity(2)) == before


def test_close_cancels_the_running_question_and_refuses_the_waiting_one(make_stack):
    path = make_stack('''
        [[stage]]
        name = "answer"
        template = "Write a very long story about {input}."
        max_tokens = 400
    ''', threads=1)
    stack = Stack.load(path)
    results, failures = {}, []
    started = threading.Event()

    def ask(name):
        try:
            for event in stack.stream(name):
                started.set()
                results[name] = event
        except InputError as exc:
            results[name] = exc
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)

    first = threading.Thread(target=ask, args=("dragons",))
    first.start()
    started.wait(30)
    second = threading.Thread(target=ask, args=("ships",))
    second.start()
    stack.close()
    first.join(30)
    second.join(30)
    assert not failures, failures
    assert results["dragons"].cancelled
    waiting = results.get("ships")
    assert waiting is None or isinstance(waiting, InputError) or waiting.cancelled
    with pytest.raises(InputError, match="closed"):
        stack.run("again")


def test_children_close_before_their_model_and_use_after_close_is_clear(smollm2_path):
    model = LoadedModel(smollm2_path, 256, 1)
    scorer = BatchScorer(model, 1, max_sequences=4, n_ctx=256)
    model.close()
    assert scorer._ctx is None  # freed by its model, first
    with pytest.raises(ClosedModelError, match="closed"):
        model.tokenize("hello")
    model.close()  # idempotent


def test_a_prompt_longer_than_the_context_is_an_error_not_a_native_failure(smollm2_path):
    from fslm_edge.config import Sampling
    from fslm_edge.engine import Generation, collect_text, stream_text
    from fslm_edge.errors import ContextOverflowError

    model = LoadedModel(smollm2_path, 64, 1)
    try:
        tokens = model.tokenize_plain("word " * 200)
        with pytest.raises(ContextOverflowError, match="more than the context size 64"):
            collect_text(stream_text(model, tokens, Generation(Sampling(max_tokens=4)), None))
        text, stats = collect_text(stream_text(model, tokens[:50], Generation(Sampling(max_tokens=40)), None))
        assert stats.generated_tokens <= 14  # stops where the context ends instead of failing to decode
    finally:
        model.close()
