"""The Python API: load a stack, stream its stages, collect the result.

    with Stack.load("stacks/qa.toml") as stack:
        for event in stack.stream("Why is the sky blue?"):
            ...
        result = stack.run("What is 2 + 2?")

``stream`` may run on a worker thread while another thread consumes events
and calls ``cancel()``; one question runs at a time per stack.
"""

from __future__ import annotations

import codecs
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .calculator import Calculator
from .config import StackConfig, StageConfig, load_stack_config
from .engine import LoadedModel, ModelPool
from .errors import ContextOverflowError, InputError
from .evaluation.scoring import ChoiceScorer, split_continuation
from .events import ContextWarning, Event, StackResult, StageEnd, StageOutput, StageStart, StageStats, TextDelta
from .models import resolve_model
from .prompts import stage_prompt
from .stopping import StopMatcher
from .voting import majority, most_likely


@dataclass
class _Binding:
    """A stage bound to its loaded model (and adapter)."""

    config: StageConfig
    model: LoadedModel


@dataclass(frozen=True)
class ScoringContext:
    """The last stage's prompt, ready to score continuations against."""

    model: LoadedModel
    stage: StageConfig
    prompt: str
    tokens: list[int]
    upstream: tuple[StageOutput, ...]


def _last_value(generator):
    """Drive a sub-generator to its end and return its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def _as_sample(binding: _Binding, sample: int) -> _Binding:
    """A stage with ``samples`` > 1 as it runs for sample ``sample`` (1..k): seed
    ``seed + sample - 1``, ``seed`` defaulting to 0. Other stages are unchanged."""
    if binding.config.samples == 1:
        return binding
    sampling = replace(binding.config.sampling, seed=(binding.config.sampling.seed or 0) + sample - 1)
    return _Binding(replace(binding.config, sampling=sampling), binding.model)


def _bind(config: StackConfig, pool: ModelPool) -> list[_Binding]:
    bindings = []
    for stage in config.stages:
        model = pool.get(resolve_model(stage.model, config.base_dir))
        if stage.adapter is not None:
            model.add_adapter(stage.adapter)
        bindings.append(_Binding(stage, model))
    return bindings


class Stack:
    def __init__(self, config: StackConfig, pool: ModelPool, bindings: list[_Binding]):
        self.config = config
        self._pool = pool
        self._bindings = bindings
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._streams: weakref.WeakSet = weakref.WeakSet()  # started streams, to finish on close

    # -- life cycle ---------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, overrides: Mapping[str, Any] | None = None, logits_all: bool = False) -> Stack:
        """Parse the stack file, load every model once, check and load adapters.
        ``logits_all`` keeps logits for every prompt position (for scoring)."""
        return cls.from_config(load_stack_config(path, overrides), logits_all)

    @classmethod
    def from_config(cls, config: StackConfig, logits_all: bool = False) -> Stack:
        pool = ModelPool(config.context_size, config.n_threads, config.batch_size, logits_all)
        try:
            bindings = _bind(config, pool)
        except BaseException:
            pool.close()
            raise
        return cls(config, pool, bindings)

    def reconfigure(self, overrides: Mapping[str, Any]) -> None:
        """Re-read the stack file with ``overrides``, keeping the loaded models."""
        config = load_stack_config(self.config.path, overrides)
        old = self.config
        if (config.context_size, config.n_threads, config.batch_size) != (
                old.context_size, old.n_threads, old.batch_size):
            raise InputError("context_size, threads and batch_size cannot change on a loaded stack; "
                             "start again with --set stack.KEY=VALUE")
        with self._lock:
            self._bindings = _bind(config, self._pool)
            self.config = config

    def close(self) -> None:
        self._cancel.set()
        for stream in list(self._streams):
            try:  # a stream left suspended mid-run holds the lock: finish it so it lets go
                stream.close()
            except ValueError:  # running in another thread: it sees the cancel flag and lets go
                pass
        with self._lock:
            if not self._closed:
                self._pool.close()
                self._closed = True

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def models(self) -> list[LoadedModel]:
        return self._pool.models

    def cancel(self) -> None:
        """Stop the generation in progress (from any thread)."""
        self._cancel.set()

    # -- running --------------------------------------------------------------
    def run(self, question: str) -> StackResult:
        """Run every stage and return the final result (collects ``stream``)."""
        result = None
        for event in self.stream(question):
            result = event
        assert isinstance(result, StackResult)
        return result

    def stream(self, question: str) -> Iterator[Event]:
        """Yield stage events as they happen, then one ``StackResult``."""
        if not question or not question.strip():
            raise InputError("the question is empty; pass some text (or '-' to read it from stdin)")
        if self._closed:
            raise InputError("this stack is closed; load it again")
        stream = self._stream(question.strip())
        self._streams.add(stream)
        return stream

    def score_context(self, question: str, upstream: Mapping[str, str] | None = None) -> ScoringContext:
        """Run every stage but the last (as ``run`` does) and prepare the last
        stage's prompt on its model, adapter active: what evaluation scores
        answer choices against. ``upstream`` gives the earlier stages' texts
        (by stage name) instead of running them; the context then has no
        upstream outputs."""
        if not question or not question.strip():
            raise InputError("the question is empty")
        question = question.strip()
        with self._lock:
            self._cancel.clear()
            values: dict[str, str] = {"input": question}
            outputs: list[StageOutput] = []
            for index, binding in enumerate(self._bindings[:-1]):
                if upstream is not None:
                    values[binding.config.name] = upstream[binding.config.name]
                    continue
                output = _last_value(self._run_stage(index, _as_sample(binding, 1), values))
                outputs.append(output)
                values[binding.config.name] = output.text
            final = self._bindings[-1]
            final.model.use_adapter(final.config.adapter, final.config.adapter_scale)
            prompt, tokens = _last_value(self._fit_prompt(final.config, final.model, values))
            return ScoringContext(final.model, final.config, prompt, tokens, tuple(outputs))

    def _stream(self, question: str) -> Iterator[Event]:
        with self._lock:
            self._cancel.clear()
            started = time.perf_counter()
            values: dict[str, str] = {"input": question}
            outputs: list[StageOutput] = []
            voting = next((i for i, b in enumerate(self._bindings) if b.config.samples > 1), len(self._bindings))
            for index, binding in enumerate(self._bindings[:voting]):
                output = yield from self._run_stage(index, binding, values)
                outputs.append(output)
                values[binding.config.name] = output.text
                if output.stats.stop_reason == "cancelled":
                    break
            votes: tuple[str, ...] = ()
            logprobs: tuple[float, ...] = ()
            chosen = 0
            if voting < len(self._bindings) and not self._cancel.is_set():
                votes, logprobs, chosen = yield from self._run_samples(voting, values, outputs)
            cancelled = self._cancel.is_set()
            final = [o for o in outputs if o.sample in (0, chosen)]
            answer = final[-1].text if final and not cancelled else ""
            yield StackResult(question, tuple(outputs), answer, time.perf_counter() - started, cancelled,
                              votes, chosen, logprobs)

    def _run_samples(self, first: int, values: dict[str, str], outputs: list[StageOutput]):
        """Self-consistency: stage ``first`` and every later stage once per sample,
        one stage at a time for all samples (the sampled stage's prompt is then
        decoded once). Returns each sample's final text, with ``select =
        "likelihood"`` each sample's log-probability of its text for stage
        ``first`` (else empty), and the chosen sample's number."""
        sampled = self._bindings[first]
        chains = [dict(values) for _ in range(sampled.config.samples)]
        logprobs: tuple[float, ...] = ()
        for index in range(first, len(self._bindings)):
            for sample, chain in enumerate(chains, start=1):
                binding = _as_sample(self._bindings[index], sample)
                output = yield from self._run_stage(index, binding, chain, sample)
                outputs.append(output)
                chain[binding.config.name] = output.text
                if self._cancel.is_set():
                    return (), (), 0
            if index == first and sampled.config.select != "majority":
                logprobs = self._text_logprobs(sampled, outputs[-1].prompt, [c[sampled.config.name] for c in chains])
        finals = tuple(chain[self._bindings[-1].config.name] for chain in chains)
        chosen = most_likely(logprobs) if logprobs else majority(finals)
        return finals, logprobs, chosen + 1

    @staticmethod
    def _text_logprobs(binding: _Binding, prompt: str, texts: list[str]) -> tuple[float, ...]:
        """Log-probability of each text as the stage's output after ``prompt``,
        under the stage's model and adapter (temperature 1): summed, or per
        token with ``select = "mean-likelihood"``. The prompt is decoded once
        (it is still in the KV cache)."""
        model = binding.model
        model.use_adapter(binding.config.adapter, binding.config.adapter_scale)
        context = model.tokenize(prompt)
        continuations = [split_continuation(model, prompt, text)[1] if text else [] for text in texts]
        scores = ChoiceScorer(model).score(context, continuations)
        per_token = binding.config.select == "mean-likelihood"
        # An empty text is never the most likely one (its summed log-probability would be 0).
        return tuple(float("-inf") if not s.n_tokens else s.logprob / s.n_tokens if per_token else s.logprob
                     for s in scores)

    def _run_stage(self, index: int, binding: _Binding, values: dict[str, str], sample: int = 0):
        stage, model = binding.config, binding.model
        model.use_adapter(stage.adapter, stage.adapter_scale)
        prompt, tokens = yield from self._fit_prompt(stage, model, values)
        yield StageStart(stage.name, index, prompt, sample)
        started = time.perf_counter()
        first = None
        pieces: list[str] = []
        stopper = StopMatcher(stage.sampling.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated = 0
        reason = "length"
        for token in self._stage_tokens(stage, model, tokens):
            generated += 1
            if first is None:
                first = time.perf_counter()
            text = stopper.feed(decoder.decode(model.llm.detokenize([token])))
            if text:
                pieces.append(text)
                yield TextDelta(stage.name, text)
            if stopper.stopped:
                reason = "stop"
                break
        else:
            if self._cancel.is_set():
                reason = "cancelled"
            elif generated < stage.sampling.max_tokens:
                reason = "eos"
        tail = stopper.feed(decoder.decode(b"", final=True)) + stopper.flush()
        if tail:
            pieces.append(tail)
            yield TextDelta(stage.name, tail)
        ended = time.perf_counter()
        first = first or ended
        decode_s = ended - first
        stats = StageStats(
            prompt_tokens=len(tokens), generated_tokens=generated, time_to_first_token_s=first - started,
            tokens_per_s=(generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0,
            seconds=ended - started, stop_reason=reason,
        )
        text = "".join(pieces).strip()
        yield StageEnd(stage.name, text, prompt, stats, sample)
        return StageOutput(stage.name, prompt, text, stats, sample)

    def _stage_tokens(self, stage: StageConfig, model: LoadedModel, prompt: list[int]) -> Iterator[int]:
        """The stage's output token ids: sampled ones and, with ``calculator = true``,
        the values the runtime computes after an ``<expression> =``; generation then
        resumes after the value (the prompt's cached keys and values are reused)."""
        if not stage.calculator:
            yield from model.generate(prompt, stage.sampling, self._cancel)
            return
        calculator = Calculator()
        output: list[int] = []
        budget = stage.sampling.max_tokens
        banned = None  # after a written value: no digit, so the model cannot lengthen the number
        while len(output) < budget:
            sampling = replace(stage.sampling, max_tokens=budget - len(output))
            written: list[int] = []
            for token in model.generate(prompt + output, sampling, self._cancel, banned):
                output.append(token)
                yield token
                value = calculator.feed(model.llm.detokenize([token]))
                written = model.tokenize_plain(value) if value else []
                if written and len(output) + len(written) <= budget:
                    break
                written = []  # a value is written whole or not at all
            if not written:
                return  # end of text, max_tokens or cancelled
            calculator.wrote(value)
            banned = model.digit_tokens()
            output += written
            yield from written

    def _fit_prompt(self, stage: StageConfig, model: LoadedModel, values: dict[str, str]):
        """Render the prompt; if it overflows the context, cut upstream stage
        texts, oldest first, and warn. Error if the question alone overflows."""
        budget = model.n_ctx - stage.sampling.max_tokens
        values = dict(values)
        prompt = stage_prompt(stage, values, model.chat_template)
        tokens = model.tokenize(prompt)
        upstream = [name for name in stage.fields if name != "input"]
        for name in upstream:
            excess = len(tokens) - budget
            if excess <= 0:
                break
            text_tokens = model.tokenize_plain(values[name])
            cut = min(len(text_tokens), excess + 4)
            values[name] = model.detokenize(text_tokens[cut:]).strip()
            prompt = stage_prompt(stage, values, model.chat_template)
            tokens = model.tokenize(prompt)
            yield ContextWarning(stage.name, f"prompt of stage '{stage.name}' overflowed the context "
                                 f"({model.n_ctx} tokens); dropped {cut} tokens from the start of '{name}'", cut)
        if len(tokens) > budget:
            raise ContextOverflowError(
                f"stage '{stage.name}': the prompt needs {len(tokens)} tokens plus max_tokens "
                f"{stage.sampling.max_tokens}, more than context_size {model.n_ctx}; raise [stack] context_size, "
                "lower the stage's max_tokens, or shorten the question"
            )
        return prompt, tokens
