"""The one generation loop: token ids in, text pieces and a stats record out.

``stream_text`` drives ``LoadedModel.generate`` and is the only place tokens
become text: one incremental UTF-8 decoder per generation, stop strings held
back until decided (``StopMatcher``), the calculator hook (``calculator =
true``: the runtime writes the value after ``<expression> =``), constrained
decoding (a GBNF grammar enforced by llama.cpp's grammar sampler) and cancel
(a ``threading.Event`` checked after every token). The stack, evaluation, the
REPL and the server all generate through it.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from ..calculator import Calculator
from ..config import Sampling
from ..events import StageStats
from ..stopping import StopMatcher
from .model import LoadedModel


@dataclass(frozen=True)
class Generation:
    """What to generate after a prompt."""

    sampling: Sampling
    grammar: str | None = None  # GBNF the output must follow
    calculator: bool = False


def stream_text(model: LoadedModel, prompt_tokens: list[int], request: Generation,
                cancel: threading.Event | None = None) -> Iterator[str | StageStats]:
    """Yield the generated text in pieces, then one ``StageStats`` (stop reason
    "eos", "stop", "length" or "cancelled")."""
    started = time.perf_counter()
    sampling = request.sampling
    stopper = StopMatcher(sampling.stop)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    calculator = Calculator() if request.calculator else None
    output: list[int] = []
    first: float | None = None
    banned = None  # after a written value: no digit first, so the model cannot lengthen the number
    reason = None
    while reason is None:
        budget = sampling.max_tokens - len(output)
        step = replace(sampling, max_tokens=budget)
        value: str | None = None
        for token in model.generate(prompt_tokens + output, step, cancel, banned, request.grammar):
            output.append(token)
            if first is None:
                first = time.perf_counter()
            raw = decoder.decode(model.token_bytes(token))
            text = stopper.feed(raw)
            if text:
                yield text
            if stopper.stopped:
                reason = "stop"
                break
            if calculator is not None and raw:
                value = calculator.feed(raw)
                if value and len(output) + len(written := model.tokenize_plain(value)) <= sampling.max_tokens:
                    break
                value = None  # a value is written whole or not at all
        else:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
            elif len(output) < sampling.max_tokens:
                reason = "eos"
            else:
                reason = "length"
        if reason is not None:
            break
        calculator.wrote(value)
        output += written
        banned = model.digit_tokens()
        text = stopper.feed(value)
        if text:
            yield text
        if stopper.stopped:
            reason = "stop"
        elif len(output) >= sampling.max_tokens:
            reason = "length"
    tail = stopper.feed(decoder.decode(b"", final=True)) + stopper.flush()
    if tail:
        yield tail
    ended = time.perf_counter()
    first = first or ended
    decode_s = ended - first
    generated = len(output)
    yield StageStats(
        prompt_tokens=len(prompt_tokens), generated_tokens=generated, time_to_first_token_s=first - started,
        tokens_per_s=(generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0,
        seconds=ended - started, stop_reason=reason,
    )


def collect_text(pieces: Iterator[str | StageStats]) -> tuple[str, StageStats]:
    """A non-streaming call: the whole text and the stats."""
    parts: list[str] = []
    stats = None
    for piece in pieces:
        if isinstance(piece, StageStats):
            stats = piece
        else:
            parts.append(piece)
    assert stats is not None
    return "".join(parts), stats
