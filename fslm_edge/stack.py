"""The Python API: load a stack, stream its stages, collect the result.

    with Stack.load("stacks/qa.toml") as stack:
        for event in stack.stream("Why is the sky blue?"):
            ...
        result = stack.run("What is 2 + 2?")

``stream`` may run on a worker thread while another thread consumes events
and calls ``cancel()``; one question runs at a time per stack.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from contextlib import contextmanager
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import INPUT_FIELDS, Sampling, StackConfig, StageConfig, load_target_config
from .engine import DecoderPool, Generation, LoadedModel, ModelPool, stream_text
from .engine.constraints import check_grammar, choices_grammar, schema_grammar, validate_json
from .engine.scoring import ChoiceScorer, split_continuation
from .errors import ContextOverflowError, InputError
from .fileio import fingerprint
from .formats import continuation
from .events import (
    ContextWarning,
    Event,
    StackResult,
    StageEnd,
    StageOutput,
    StageStart,
    StageStats,
    StageWarning,
    TextDelta,
)
from .models import resolve_model
from .options import OptionsSplit, input_values, split_options
from .prompts import Prompt, stage_prompt
from .voting import majority, most_likely

# Keys of a per-call ``final`` table: sampling settings for the final stage only.
FINAL_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop")


@dataclass(frozen=True)
class Constraint:
    """Structured output for one stage: the GBNF it must follow, and the JSON
    schema its text must validate against (after generation, as a check)."""

    grammar: str
    schema: dict | None = None
    choices: tuple[str, ...] = ()  # for a choice list: the choices (``choices_by = "likelihood"`` scores them)


@dataclass
class _Binding:
    """A stage bound to its loaded model (and adapter) and its constraint."""

    config: StageConfig
    model: LoadedModel
    constraint: Constraint | None = None


@dataclass(frozen=True)
class ScoringContext:
    """The last stage's prompt, ready to score continuations against."""

    model: LoadedModel
    stage: StageConfig
    prompt: Prompt
    tokens: list[int]
    upstream: tuple[StageOutput, ...]


@dataclass
class _Call:
    """One ``stream`` call: its cancel flag and its final-stage settings."""

    cancel: threading.Event
    final_sampling: dict = field(default_factory=dict)
    final_constraint: Constraint | None = None
    options: tuple[str, ...] = ()  # the lettered options the question lists (choices_from_input)
    bindings: list[_Binding] = field(default_factory=list)  # the stages that run for this question
    last_prompt: Prompt | None = None  # the prompt of the stage that ran last (scored by select = "likelihood")
    given: Mapping[str, str] = field(default_factory=dict)  # stage texts given by the caller, not generated


def question_kind(split: OptionsSplit) -> str:
    """"lettered" (the question lists lettered options), "yes_no" (it asks for
    a yes or no) or "open": what a stage's ``when`` tests."""
    return "lettered" if split.option_lines else "yes_no" if split.options else "open"


# the question kinds each ``when`` value runs for
_WHEN_KINDS = {"always": {"lettered", "yes_no", "open"}, "options": {"lettered", "yes_no"}, "no_options": {"open"},
               "lettered": {"lettered"}, "yes_no": {"yes_no"}}


def _runs(binding: _Binding, kind: str) -> bool:
    """Whether a stage runs for a question of this kind (``question_kind``): its ``when``."""
    return kind in _WHEN_KINDS[binding.config.when]


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
    return _Binding(replace(binding.config, sampling=sampling), binding.model, binding.constraint)


def stage_constraint(stage: StageConfig, model: LoadedModel) -> Constraint | None:
    """The stage's ``choices``, ``grammar`` or ``json_schema`` as a checked grammar."""
    where = f"{stage.source}: stage '{stage.name}'"
    return make_constraint(model, stage.choices, stage.grammar, stage.json_schema,
                           where=f"{stage.grammar_file or where}", schema_where=f"{where}: json_schema")


def make_constraint(model: LoadedModel, choices: Sequence[str] | None = None, grammar: str | None = None,
                    json_schema: dict | None = None, where: str = "grammar",
                    schema_where: str = "json_schema") -> Constraint | None:
    given = [name for name, value in (("choices", choices), ("grammar", grammar), ("json_schema", json_schema))
             if value is not None]
    if not given:
        return None
    if len(given) > 1:
        raise InputError(f"{where}: give one of choices, grammar and json_schema, not {' and '.join(given)}")
    if choices is not None:
        text = choices_grammar(list(choices))
    elif grammar is not None:
        text = grammar
    else:
        text = schema_grammar(json_schema, schema_where)
    check_grammar(text, model.vocab_handle, where)
    return Constraint(text, json_schema, tuple(dict.fromkeys(choices)) if choices is not None else ())


CONTENT_FREE = "N/A"  # the question of the calibration prompt (Zhao et al. 2021's content-free input)


def pick_by_likelihood(model: LoadedModel, prompt: Prompt, tokens: list[int], choices: Sequence[str],
                       free_prompt: Prompt | None = None, per_byte: bool = True) -> str:
    """The choice whose text the model finds most likely after the prompt.
    Without ``free_prompt``: per byte (as evaluation's acc_norm scores
    choices), each choice scored whole, where greedy decoding under a grammar
    decides by its first tokens. With it (``choices_by = "calibrated"``): the
    choice's log-probability minus its log-probability after ``free_prompt``,
    the same prompt with no question in it, so a choice is not picked for being
    likely whatever was asked (domain-conditional PMI, Holtzman et al. 2021)."""
    scorer = ChoiceScorer(model)
    continuations = [continuation(prompt.text, choice) for choice in choices]
    scores = scorer.score(tokens, [split_continuation(model, prompt, text)[1] for text in continuations])
    if free_prompt is None:  # per_byte=False (``choices_by = "total"``): the whole text's log-probability
        values = [s.logprob / (max(len(text.encode("utf-8")), 1) if per_byte else 1)
                  for s, text in zip(scores, continuations)]
    else:
        free_continuations = [continuation(free_prompt.text, choice) for choice in choices]
        free = scorer.score(model.tokenize_prompt(free_prompt),
                            [split_continuation(model, free_prompt, text)[1] for text in free_continuations])
        values = [s.logprob - f.logprob for s, f in zip(scores, free)]
    return choices[max(range(len(choices)), key=values.__getitem__)]


def content_free_values(values: Mapping[str, str], stage_names: Sequence[str]) -> dict[str, str]:
    """The prompt values of the calibration prompt: the question "N/A", no
    earlier stage's text; the options (when a template shows them) kept."""
    free = {**values, **{name: "" for name in stage_names}}
    free["input"] = free["question"] = CONTENT_FREE
    return free


def _bind(config: StackConfig, pool: ModelPool) -> list[_Binding]:
    bindings = []
    for stage in config.stages:
        model = pool.get(resolve_model(stage.model, config.base_dir))
        if stage.adapter is not None:
            model.add_adapter(stage.adapter)
        bindings.append(_Binding(stage, model, stage_constraint(stage, model)))
    return bindings


def _final_sampling(sampling: Sampling, final: Mapping[str, Any]) -> Sampling:
    if not final:
        return sampling
    unknown = [key for key in final if key not in FINAL_KEYS]
    if unknown:
        raise InputError(f"final: unknown setting '{unknown[0]}' (valid: {', '.join(FINAL_KEYS)})")
    from .config import check_sampling_values

    values = check_sampling_values(dict(final), "final")
    return replace(sampling, **values)


class Stack:
    def __init__(self, config: StackConfig, pool: ModelPool, bindings: list[_Binding]):
        self.config = config
        self._pool = pool
        self._bindings = bindings
        self._lock = threading.Lock()  # one question at a time
        self._calls_lock = threading.Lock()
        self._calls: set[int] = set()
        self._cancels: dict[int, threading.Event] = {}  # every started or waiting call's cancel flag
        self._closing = False
        self._closed = False
        self._streams: weakref.WeakSet = weakref.WeakSet()  # started streams, to finish on close
        # a stagecache.GenerationMemo (or anything with get/put): greedy stage texts generated once
        self.generation_memo = None

    # -- life cycle ---------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, overrides: Mapping[str, Any] | None = None, logits_all: bool = False,
             decoders: DecoderPool | None = None) -> Stack:
        """Parse the stack file (or make a one-stage stack of a model reference:
        ``builtin:NAME`` or a ``.gguf`` path), load every model once, check and
        load adapters. ``logits_all`` keeps logits for every prompt position.
        ``decoders``: stacks given the same pool decode their generations
        together (continuous batching, ``engine.batch``); the caller closes it
        after the stacks."""
        return cls.from_config(load_target_config(path, overrides), logits_all, decoders)

    @classmethod
    def from_config(cls, config: StackConfig, logits_all: bool = False, decoders: DecoderPool | None = None) -> Stack:
        pool = ModelPool(config.context_size, config.n_threads, config.batch_size, logits_all, config.gpu_layers,
                         decoders)
        try:
            bindings = _bind(config, pool)
        except BaseException:
            pool.close()
            raise
        return cls(config, pool, bindings)

    def reconfigure(self, overrides: Mapping[str, Any]) -> None:
        """Re-read the stack file with ``overrides``, keeping the loaded models."""
        config = load_target_config(self.config.path if self.config.path.suffix == ".toml" else self.config.source,
                                    overrides)
        old = self.config
        if (config.context_size, config.n_threads, config.batch_size, config.gpu_layers) != (
                old.context_size, old.n_threads, old.batch_size, old.gpu_layers):
            raise InputError("context_size, threads, batch_size and gpu_layers cannot change on a loaded stack; "
                             "start again with --set stack.KEY=VALUE")
        with self._lock:
            self._bindings = _bind(config, self._pool)
            self.config = config

    def close(self) -> None:
        """Cancel the running question and every waiting one, then free the
        models (children first). Safe from any thread; idempotent."""
        self._closing = True
        self.cancel()
        for stream in list(self._streams):
            try:  # a stream left suspended mid-run holds the lock: finish it so it lets go
                stream.close()
            except ValueError:  # running in another thread: it sees its cancel flag and lets go
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

    def stage_model(self, name: str) -> LoadedModel:
        """The loaded model stage ``name`` runs on."""
        for binding in self._bindings:
            if binding.config.name == name:
                return binding.model
        raise InputError(f"no stage '{name}' in this stack")

    def cancel(self) -> None:
        """Stop the generation in progress, and any question waiting for it (from any thread)."""
        with self._calls_lock:
            for event in self._cancels.values():
                event.set()

    # -- running --------------------------------------------------------------
    def run(self, question: str, **options) -> StackResult:
        """Run every stage and return the final result (collects ``stream``)."""
        result = None
        for event in self.stream(question, **options):
            result = event
        assert isinstance(result, StackResult)
        return result

    def stream(self, question: str, *, choices: Sequence[str] | None = None, grammar: str | None = None,
               json_schema: dict | None = None, final: Mapping[str, Any] | None = None,
               cancel: threading.Event | None = None, given: Mapping[str, str] | None = None,
               through: str | None = None) -> Iterator[Event]:
        """Yield stage events as they happen, then one ``StackResult``.

        For the final stage only: ``choices`` (its text is exactly one of these),
        ``grammar`` (GBNF) or ``json_schema`` (a dict: the text is JSON that
        validates), and ``final`` sampling settings (``FINAL_KEYS``). ``cancel``
        stops this call within one token when set. ``given``: texts of named
        stages to use as they are instead of generating them (what a later
        stage makes of a given earlier text). ``through``: stop after this
        stage, which is then the final one."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty; pass some text (or '-' to read it from stdin)")
        if self._closed or self._closing:
            raise InputError("this stack is closed; load it again")
        question = question.strip()
        split = split_options(question)
        options = split.options
        active = [b for b in self._bindings if _runs(b, question_kind(split))]
        if not active:
            raise InputError(f"no stage of this stack runs for a question {'with' if options else 'without'} "
                             "lettered options (every stage's 'when' excludes it)")
        active = self._through(active, through)
        names = {b.config.name for b in self._bindings}
        unknown = sorted(set(given or {}) - names)
        if unknown:
            raise InputError(f"given text for unknown stage '{unknown[0]}'; stages: {', '.join(sorted(names))}")
        last = active[-1]
        call = _Call(cancel or threading.Event(),
                     dict(final or {}),
                     make_constraint(last.model, choices, grammar, json_schema, where="this call's grammar"),
                     options, active, given=dict(given or {}))
        _final_sampling(last.config.sampling, call.final_sampling)  # refuse bad settings before running
        stream = self._stream(question, call)
        self._streams.add(stream)
        return stream

    def _through(self, active: list[_Binding], through: str | None) -> list[_Binding]:
        """The stages that run, cut after stage ``through`` (None: all)."""
        if through is None:
            return active
        names = [b.config.name for b in active]
        if through not in names:
            every = [b.config.name for b in self._bindings]
            why = "does not run for this question (its 'when')" if through in every else "is not a stage"
            raise InputError(f"through = '{through}' {why}; stages that run: {', '.join(names)}")
        return active[: names.index(through) + 1]

    def score_context(self, question: str, upstream: Mapping[str, str] | None = None) -> ScoringContext:
        """Run every stage but the last (as ``run`` does) and prepare the last
        stage's prompt on its model, adapter active: what evaluation scores
        answer choices against. The stages are those that run for a
        multiple-choice question (``when`` = "always", "options" or "lettered"), options
        listed in the question or not. ``upstream`` gives the earlier stages'
        texts (by stage name) instead of running them; the context then has no
        upstream outputs."""
        if not question or not question.strip():
            raise InputError("the question is empty")
        question = question.strip()
        active = [b for b in self._bindings if _runs(b, "lettered")]
        call = _Call(threading.Event(), bindings=active)
        with self._running(call):
            values = self._input_values(question)
            outputs: list[StageOutput] = []
            for index, binding in enumerate(active[:-1]):
                if upstream is not None:
                    values[binding.config.name] = upstream[binding.config.name]
                    continue
                output = _last_value(self._run_stage(index, _as_sample(binding, 1), values, call))
                outputs.append(output)
                values[binding.config.name] = output.text
            final = active[-1]
            final.model.use_adapter(final.config.adapter, final.config.adapter_scale)
            prompt, tokens = _last_value(self._fit_prompt(final.config, final.model, values))
            return ScoringContext(final.model, final.config, prompt, tokens, tuple(outputs))

    def _input_values(self, question: str) -> dict[str, str]:
        """``{input}``, ``{question}``, ``{options}``, and every stage's name
        bound to "" until it runs (a stage whose ``when`` skips it stays "")."""
        return {**{b.config.name: "" for b in self._bindings}, **input_values(question)}

    @contextmanager
    def _running(self, call: _Call):
        """Register ``call`` (so cancel and close reach it while it waits), hold
        the stack's lock, and refuse to start on a stack closed meanwhile."""
        with self._calls_lock:
            self._cancels[id(call)] = call.cancel
        try:
            if self._closing:
                call.cancel.set()
            with self._lock:
                if self._closed:
                    raise InputError("this stack was closed; load it again")
                yield call
        finally:
            with self._calls_lock:
                self._cancels.pop(id(call), None)

    def _stream(self, question: str, call: _Call) -> Iterator[Event]:
        with self._running(call):
            started = time.perf_counter()
            values = self._input_values(question)
            outputs: list[StageOutput] = []
            active = call.bindings
            voting = next((i for i, b in enumerate(active) if b.config.samples > 1), len(active))
            for index, binding in enumerate(active[:voting]):
                output = yield from self._run_stage(index, binding, values, call)
                outputs.append(output)
                values[binding.config.name] = output.text
                if output.stats.stop_reason == "cancelled":
                    break
            votes: tuple[str, ...] = ()
            logprobs: tuple[float, ...] = ()
            chosen = 0
            if voting < len(active) and not call.cancel.is_set():
                votes, logprobs, chosen = yield from self._run_samples(voting, values, outputs, call)
            cancelled = call.cancel.is_set()
            final = [o for o in outputs if o.sample in (0, chosen)]
            answer = final[-1].text if final and not cancelled else ""
            yield StackResult(question, tuple(outputs), answer, time.perf_counter() - started, cancelled,
                              votes, chosen, logprobs)

    def _run_samples(self, first: int, values: dict[str, str], outputs: list[StageOutput], call: _Call):
        """Self-consistency: stage ``first`` and every later stage once per sample,
        one stage at a time for all samples (the sampled stage's prompt is then
        decoded once). Returns each sample's final text, with ``select =
        "likelihood"`` each sample's log-probability of its text for stage
        ``first`` (else empty), and the chosen sample's number."""
        active = call.bindings
        sampled = active[first]
        chains = [dict(values) for _ in range(sampled.config.samples)]
        logprobs: tuple[float, ...] = ()
        for index in range(first, len(active)):
            prompt = None
            for sample, chain in enumerate(chains, start=1):
                binding = _as_sample(active[index], sample)
                output = yield from self._run_stage(index, binding, chain, call, sample)
                outputs.append(output)
                chain[binding.config.name] = output.text
                prompt = call.last_prompt
                if call.cancel.is_set():
                    return (), (), 0
            if index == first and sampled.config.select != "majority":
                logprobs = self._text_logprobs(sampled, prompt, [c[sampled.config.name] for c in chains])
        finals = tuple(chain[active[-1].config.name] for chain in chains)
        chosen = most_likely(logprobs) if logprobs else majority(finals)
        return finals, logprobs, chosen + 1

    @staticmethod
    def _text_logprobs(binding: _Binding, prompt: Prompt, texts: list[str]) -> tuple[float, ...]:
        """Log-probability of each text as the stage's output after ``prompt``,
        under the stage's model and adapter (temperature 1): summed, or per
        token with ``select = "mean-likelihood"``. The prompt is decoded once
        (it is still in the KV cache)."""
        model = binding.model
        model.use_adapter(binding.config.adapter, binding.config.adapter_scale)
        context = model.tokenize_prompt(prompt)
        continuations = [split_continuation(model, prompt, text)[1] if text else [] for text in texts]
        scores = ChoiceScorer(model).score(context, continuations)
        per_token = binding.config.select == "mean-likelihood"
        # An empty text is never the most likely one (its summed log-probability would be 0).
        return tuple(float("-inf") if not s.n_tokens else s.logprob / s.n_tokens if per_token else s.logprob
                     for s in scores)

    def _stage_request(self, index: int, binding: _Binding, call: _Call) -> tuple[Generation, Constraint | None]:
        stage = binding.config
        sampling, constraint = stage.sampling, binding.constraint
        if index == len(call.bindings) - 1:
            sampling = _final_sampling(sampling, call.final_sampling)
            constraint = call.final_constraint or constraint
        if constraint is None and stage.choices_from_input and call.options:
            if stage.choices_by != "grammar":  # the options are scored, not sampled: no grammar to build
                constraint = Constraint("", None, tuple(dict.fromkeys(call.options)))
            else:
                constraint = make_constraint(binding.model, call.options, where=f"stage '{stage.name}' options")
        grammar = (constraint.grammar or None) if constraint is not None else None
        return Generation(sampling, grammar, stage.calculator and grammar is None), constraint

    def _memo_key(self, binding: _Binding, tokens: list[int], request: Generation) -> str | None:
        """The ``generation_memo`` key of a greedy generation (None: not remembered)."""
        if self.generation_memo is None or request.sampling.temperature != 0:
            return None
        stage, model = binding.config, binding.model
        files = [model.path] + ([stage.adapter] if stage.adapter is not None else [])
        ident = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        batched = model.decoder is not None  # batched decoding can round a near tie the other way
        return fingerprint(json.dumps([ident, stage.adapter_scale, model.n_ctx, batched, tokens, repr(request)]))

    def _run_stage(self, index: int, binding: _Binding, values: dict[str, str], call: _Call, sample: int = 0):
        stage, model = binding.config, binding.model
        if stage.name in call.given:
            return (yield from self._given_stage(index, binding, values, call, sample))
        model.use_adapter(stage.adapter, stage.adapter_scale)
        request, constraint = self._stage_request(index, binding, call)
        prompt, tokens = yield from self._fit_prompt(stage, model, values, request.sampling.max_tokens)
        call.last_prompt = prompt
        yield StageStart(stage.name, index, prompt.text, sample, final=index == len(call.bindings) - 1)
        pieces: list[str] = []
        stats: StageStats | None = None
        picks = constraint is not None and constraint.choices and stage.choices_by != "grammar"
        memo_key = None if picks else self._memo_key(binding, tokens, request)  # a pick is cheap: not kept
        remembered = self.generation_memo.get(memo_key) if memo_key is not None else None
        if remembered is not None:
            pieces, stats = [remembered["text"]], StageStats(**remembered["stats"])
            yield TextDelta(stage.name, pieces[0])
        elif picks:
            free = None
            if stage.choices_by == "calibrated":
                names = [b.config.name for b in self._bindings]
                free = stage_prompt(stage, content_free_values(values, names), model.chat_template)
            pieces = [pick_by_likelihood(model, prompt, tokens, constraint.choices, free,
                                         per_byte=stage.choices_by != "total")]
            stats = StageStats(len(tokens), len(model.tokenize_plain(pieces[0])), 0.0, 0.0, 0.0, "choice")
            yield TextDelta(stage.name, pieces[0])
        for piece in () if stats is not None else stream_text(model, tokens, request, call.cancel):
            if isinstance(piece, StageStats):
                stats = piece
                continue
            pieces.append(piece)
            yield TextDelta(stage.name, piece)
        if memo_key is not None and remembered is None and stats.stop_reason != "cancelled":
            self.generation_memo.put(memo_key, {"text": "".join(pieces), "stats": asdict(stats)})
        text = "".join(pieces).strip()
        if not text and stats.stop_reason != "cancelled":
            yield StageWarning(stage.name, f"stage '{stage.name}' generated no text ({stats.generated_tokens} "
                                           f"tokens, stopped by {stats.stop_reason}); check its model, adapter "
                                           "and adapter_scale")
        if constraint is not None and constraint.schema is not None and stats.stop_reason != "cancelled":
            problem = validate_json(text, constraint.schema)
            if problem is not None:
                yield StageWarning(stage.name, f"stage '{stage.name}': the output does not validate against "
                                               f"its JSON schema ({problem}); stopped by {stats.stop_reason}, "
                                               "raise max_tokens if it was cut")
        yield StageEnd(stage.name, text, prompt.text, stats, sample)
        return StageOutput(stage.name, prompt.text, text, stats, sample)

    def _given_stage(self, index: int, binding: _Binding, values: dict[str, str], call: _Call, sample: int):
        """A stage whose text the caller gave: its prompt as it would have been, its text as given."""
        stage = binding.config
        prompt, _ = yield from self._fit_prompt(stage, binding.model, values)
        call.last_prompt = prompt
        text = call.given[stage.name].strip()
        yield StageStart(stage.name, index, prompt.text, sample, final=index == len(call.bindings) - 1)
        yield TextDelta(stage.name, text)
        stats = StageStats(0, 0, 0.0, 0.0, 0.0, "given")
        yield StageEnd(stage.name, text, prompt.text, stats, sample)
        return StageOutput(stage.name, prompt.text, text, stats, sample)

    def _fit_prompt(self, stage: StageConfig, model: LoadedModel, values: dict[str, str],
                    max_tokens: int | None = None):
        """Render the prompt; if it overflows the context, cut upstream stage
        texts, oldest first, and warn. Error if the question alone overflows."""
        max_tokens = stage.sampling.max_tokens if max_tokens is None else max_tokens
        budget = model.n_ctx - max_tokens
        values = dict(values)
        prompt = stage_prompt(stage, values, model.chat_template)
        tokens = model.tokenize_prompt(prompt)
        upstream = [name for name in stage.fields if name not in INPUT_FIELDS]
        for name in upstream:
            excess = len(tokens) - budget
            if excess <= 0:
                break
            text_tokens = model.tokenize_plain(values[name])
            cut = min(len(text_tokens), excess + 4)
            values[name] = model.detokenize(text_tokens[cut:]).strip()
            prompt = stage_prompt(stage, values, model.chat_template)
            tokens = model.tokenize_prompt(prompt)
            yield ContextWarning(stage.name, f"prompt of stage '{stage.name}' overflowed the context "
                                 f"({model.n_ctx} tokens); dropped {cut} tokens from the start of '{name}'", cut)
        if len(tokens) > budget:
            raise ContextOverflowError(
                f"stage '{stage.name}': the prompt needs {len(tokens)} tokens plus max_tokens "
                f"{max_tokens}, more than context_size {model.n_ctx}; raise [stack] context_size, "
                "lower the stage's max_tokens, or shorten the question",
                prompt_tokens=len(tokens), max_tokens=max_tokens, context_size=model.n_ctx,
            )
        return prompt, tokens
