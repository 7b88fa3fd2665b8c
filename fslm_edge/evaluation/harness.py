"""Evaluation targets (a single model or a stack) and the per-example loop.

``evaluate`` is a generator: one JSON-ready record per example, taken from
the per-example cache when present (so an interrupted run resumes), else
computed and appended to the cache at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..calculator import VERSION as CALCULATOR_VERSION
from ..config import Sampling
from ..engine import Generation, LoadedModel, collect_text, stream_text
from ..formats import continuation
from ..jsonlog import append_record, read_records
from ..models import cache_dir, resolve_model
from ..prompts import Prompt
from ..stagecache import StageOutputCache, stages_fingerprint
from .data import BadRow, Example
from .extract import extract_answer, is_correct
from .matcher import MATCHER_VERSION, match_answer
from ..engine.scoring import BatchScorer, ChoiceScorer, Request, split_continuation
from .tasks import Task

CACHE_VERSION = 1
# Generate mode's cache format. Not the matcher's version: a cached printed text is matched again
# when the matcher changes (``decide``), never generated again for that.
GENERATE_CACHE_VERSION = 1
GEN_MAX_TOKENS = 256
GEN_STOPS = ("Question:", "\n\n\n")


def stack_definition(path: Path) -> str:
    """A stack file's settings as canonical JSON: what decides its outputs, so a
    comment or layout edit keeps the per-example cache valid."""
    from ..config import tomllib  # tomli before Python 3.11

    return json.dumps(tomllib.loads(path.read_text(encoding="utf-8")), sort_keys=True, default=str)


def _stat(path: Path) -> str:
    info = Path(path).stat()
    return f"{Path(path).resolve()}:{info.st_size}:{info.st_mtime_ns}"


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _token_requests(model: LoadedModel, requests: list[tuple[str, str]]) -> list[Request]:
    """(context, continuation) text pairs as token requests; choices sharing a
    context form one request, so the context is evaluated once."""
    grouped: list[Request] = []
    start = 0
    while start < len(requests):
        end = start + 1
        while end < len(requests) and requests[end][0] == requests[start][0]:
            end += 1
        # A task's plain-text context holds a dataset row's text: no special tokens in it (a stack's
        # context is already a Prompt whose template parts may have them).
        pairs = [split_continuation(model, context if isinstance(context, Prompt) else Prompt.untrusted(context), cont)
                 for context, cont in requests[start:end]]
        grouped.append((pairs[0][0], [cont for _, cont in pairs]))
        start = end
    return grouped


def _score_requests(model: LoadedModel, scorer: ChoiceScorer, requests: list[tuple[str, str]]):
    return [score for context, conts in _token_requests(model, requests) for score in scorer.score(context, conts)]


def mc_record(example: Example, continuations: list[str], scores) -> dict:
    logprobs = [s.logprob for s in scores]
    lengths = [len(c.encode("utf-8")) for c in continuations]
    nospace = [max(len(c.lstrip().encode("utf-8")), 1) for c in continuations]
    pred = _argmax(logprobs)
    pred_norm = _argmax([lp / max(n, 1) for lp, n in zip(logprobs, lengths)])
    pred_nospace = _argmax([lp / n for lp, n in zip(logprobs, nospace)])
    return {
        "id": example.id, "question": example.question, "choices": list(example.choices), "gold": example.answer,
        "pred": pred, "pred_norm": pred_norm, "correct": pred == example.answer,
        "correct_norm": pred_norm == example.answer, "correct_norm_nospace": pred_nospace == example.answer,
        "logprobs": logprobs, "choice_bytes": lengths, "greedy": [s.greedy for s in scores],
    }


def gen_record(example: Example, text: str) -> dict:
    extracted = extract_answer(text, str(example.answer))
    return {"id": example.id, "question": example.question, "gold": example.answer, "output": text,
            "extracted": extracted, "correct": is_correct(extracted, str(example.answer))}


class ModelTarget:
    """One GGUF model, the task's own prompt format, no stages."""

    kind = "model"

    def __init__(self, ref: str, n_threads: int, n_ctx: int = 2048, max_new_tokens: int = GEN_MAX_TOKENS,
                 batch: int = 1):
        path = resolve_model(ref)
        self.max_new_tokens = max_new_tokens
        self.name = ref
        # batch > 1: multiple-choice questions are scored that many at a time (BatchScorer),
        # whose figures differ slightly from ChoiceScorer's on quantized weights: a cache of their own.
        self.batch = batch
        self.fingerprint = f"model:{_stat(path)}:gen{max_new_tokens}" + (f":batch{batch}" if batch > 1 else "")
        self.model = LoadedModel(path, n_ctx, n_threads, 512)
        chat = self.model.chat_template
        if chat is not None and not chat.tokenizer_adds_bos:
            self.fingerprint += ":keeps-bos"  # generative prompts keep the template's BOS text (prompts.py)
        self.scorer = ChoiceScorer(self.model)
        self._batch_scorer = BatchScorer(self.model, n_threads, max_sequences=max(64, 8 * batch)) if batch > 1 else None

    def run_mc(self, task: Task, example: Example, lettered: bool) -> dict:
        return self.run_mc_many(task, [example], lettered)[0]

    def run_mc_many(self, task: Task, examples: list[Example], lettered: bool) -> list[dict]:
        """Records of several questions, scored in one batch when ``batch`` > 1."""
        texts = [task.requests(example, lettered) for example in examples]
        token_requests = [_token_requests(self.model, requests) for requests in texts]
        if self._batch_scorer is not None:
            flat = self._batch_scorer.score_many([r for requests in token_requests for r in requests])
        else:
            flat = [self.scorer.score(context, conts) for requests in token_requests for context, conts in requests]
        records, used = [], 0
        for example, requests, grouped in zip(examples, texts, token_requests):
            scores = [score for group in flat[used: used + len(grouped)] for score in group]
            used += len(grouped)
            record = mc_record(example, [c for _, c in requests], scores)
            records.append({**record, "generated_tokens": 0, "stages": []})
        return records

    def run_gen(self, task: Task, example: Example) -> dict:
        """Greedy generation through the engine's one loop, on the task's prompt
        (in the model's chat template when it has one); the question's text is
        never parsed for special tokens."""
        parts = task.gen_prompt_parts(example)
        chat = self.model.chat_template
        prompt = chat.user_turn(None, parts) if chat is not None else Prompt(parts)
        tokens = self.model.tokenize_prompt(prompt)
        request = Generation(Sampling(max_tokens=self.max_new_tokens, temperature=0.0, stop=GEN_STOPS))
        text, stats = collect_text(stream_text(self.model, tokens, request, None))
        record = gen_record(example, text.strip())
        return {**record, "generated_tokens": stats.generated_tokens, "stages": []}

    def close(self) -> None:
        if self._batch_scorer is not None:
            self._batch_scorer.close()
        self.model.close()


class StackTarget:
    """A stack file: upstream stages run at temperature 0, then the final
    stage's prompt is the context the choices are scored against. A stage with
    ``samples`` > 1 keeps its sampling (seeded, so reproducible) and selects
    among the samples (its ``select``) on generative tasks; multiple-choice
    scoring runs its first sample only."""

    kind = "stack"

    def __init__(self, ref: str, cache_folder: Path | None = None):
        from ..config import greedy_overrides, load_stack_config, split_stack_ref
        from ..stack import Stack

        self.name = ref
        path, overrides = split_stack_ref(ref)
        greedy = greedy_overrides(load_stack_config(path, overrides))
        self.stack = Stack.load(path, {**overrides, **greedy})
        parts = [stack_definition(Path(path)), repr(sorted(overrides.items()))]
        parts += [_stat(m.path) for m in self.stack.models]
        parts += [_stat(s.adapter) for s in self.stack.config.stages if s.adapter is not None]
        if any(s.calculator for s in self.stack.config.stages):  # its rules decide the texts too
            parts.append(f"calculator-{CALCULATOR_VERSION}")
        self.fingerprint = "stack:" + "|".join(parts)
        self._scorers: dict[int, ChoiceScorer] = {}
        config = self.stack.config
        earlier = stages_fingerprint(config.context_size, config.stages[:-1],
                                     "|".join(_stat(m.path) for m in self.stack.models))
        self.upstream_cache = StageOutputCache(Path(cache_folder) / "stages.jsonl", earlier) if cache_folder else None

    @staticmethod
    def _stages(outputs) -> list[dict]:
        return [{"name": o.name, "text": o.text, "generated_tokens": o.stats.generated_tokens,
                 "seconds": o.stats.seconds, **({"sample": o.sample} if o.sample else {})} for o in outputs]

    def _context(self, stack_input: str):
        """The final stage's scoring context and the earlier stages' records,
        the latter from the stage cache when this input was seen before."""
        cached = self.upstream_cache.get(stack_input) if self.upstream_cache is not None else None
        if cached is not None:
            texts = {s["name"]: s["text"] for s in cached["stages"]}
            return self.stack.score_context(stack_input, texts), cached["stages"], True
        context = self.stack.score_context(stack_input)
        stages = self._stages(context.upstream)
        if self.upstream_cache is not None:
            self.upstream_cache.put(stack_input, {"stages": stages})
        return context, stages, False

    def run_mc(self, task: Task, example: Example, lettered: bool) -> dict:
        context, stages, reused = self._context(task.stack_input(example, self.stack.config.show_choices))
        scorer = self._scorers.setdefault(id(context.model), ChoiceScorer(context.model))
        continuations = [continuation(context.prompt.text, c) for c in task.stack_continuations(example, lettered)]
        requests = [(context.prompt, c) for c in continuations]
        record = mc_record(example, continuations, _score_requests(context.model, scorer, requests))
        # Seconds of the earlier stages when they came from the stage cache: a
        # question's reported time is what it took when they were generated.
        reused_seconds = sum(s.get("seconds", 0.0) for s in stages) if reused else 0.0
        return {**record, "generated_tokens": sum(s["generated_tokens"] for s in stages), "stages": stages,
                "reused_seconds": reused_seconds}

    def run_gen(self, task: Task, example: Example) -> dict:
        result = self.stack.run(task.stack_input(example, self.stack.config.show_choices))
        stages = self._stages(result.stages)
        record = gen_record(example, result.answer)
        if result.votes:
            record["votes"] = list(result.votes)
            record["chosen_sample"] = result.chosen_sample
        if result.sample_logprobs:
            # JSON has no -inf: an empty sample's figure is null.
            record["sample_logprobs"] = [round(lp, 4) if math.isfinite(lp) else None for lp in result.sample_logprobs]
        return {**record, "generated_tokens": sum(s["generated_tokens"] for s in stages), "stages": stages}

    def close(self) -> None:
        self.stack.close()


def decide(output: str, choices, gold: int) -> dict:
    """The matcher's decision on a printed answer, as record fields."""
    decision = match_answer(output, choices)
    return {**decision.to_dict(), "correct": decision.pred == gold, "matcher": MATCHER_VERSION}


def _rematched(record: dict) -> dict:
    """A cached generate-mode record decided by this matcher (the text stays)."""
    if "match" not in record or record.get("matcher") == MATCHER_VERSION:
        return record
    return {**record, **decide(record["output"], record["choices"], record["gold"])}


class GenerateTarget:
    """Generate mode: a stack file or a model reference (a one-stage chat
    stack, ``template = "{input}"``) run exactly as ``fslm-edge run`` runs it,
    every stage generated at temperature 0 (a stage with ``samples`` > 1 keeps
    its seeded sampling and its ``select``); the printed answer is matched to
    the options by ``matcher.match_answer``. A model reference runs on
    ``n_threads``; a stack file on its own ``threads``. ``batch`` > 1: that
    many questions run at once, on as many instances of the stack sharing one
    batched decoder per model file (``engine.batch``), so their stages'
    tokens are decoded together; on quantized weights a token can then differ
    from ``fslm-edge run``'s where two are nearly tied, so it has a cache of
    its own."""

    kind = "generate"

    def __init__(self, ref: str, n_threads: int, batch: int = 1, cache_folder: Path | None = None):
        from ..config import greedy_overrides, is_stack_ref, load_target_config
        from ..engine import DecoderPool
        from ..stack import Stack
        from ..stagecache import GenerationMemo

        self.name = ref
        self.batch = batch
        config = load_target_config(ref)
        overrides: dict = greedy_overrides(config)
        if not is_stack_ref(ref):
            overrides["stack.threads"] = n_threads
        self.decoders = None
        if batch > 1:
            settled = load_target_config(ref, overrides)
            self.decoders = DecoderPool(batch, settled.context_size, settled.n_threads, settled.gpu_layers)
        self.stacks: list = []
        try:
            for _ in range(batch):
                self.stacks.append(Stack.load(ref, overrides, decoders=self.decoders))
        except BaseException:
            self.close()
            raise
        self.stack = self.stacks[0]
        if cache_folder is not None:  # greedy stage texts generated once across targets and runs
            memo = GenerationMemo(Path(cache_folder) / "generations.jsonl")
            for stack in self.stacks:
                stack.generation_memo = memo
        config = self.stack.config
        parts = [repr(config.stages), repr(sorted(overrides.items())), str(config.context_size)]
        if config.path.suffix == ".toml":
            parts.append(stack_definition(config.path))
        parts += [_stat(m.path) for m in self.stack.models]
        parts += [_stat(s.adapter) for s in config.stages if s.adapter is not None]
        if any(s.calculator for s in config.stages):
            parts.append(f"calculator-{CALCULATOR_VERSION}")
        self.fingerprint = "generate:" + "|".join(parts) + (f":batch{batch}" if batch > 1 else "")

    def run_mc_many(self, task: Task, examples: list[Example], lettered: bool = False) -> list[dict]:
        """Up to ``batch`` questions at once, one stack instance (and thread) each."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(examples)) as pool:
            return list(pool.map(lambda pair: self.run_mc(task, pair[1], lettered, self.stacks[pair[0]]),
                                 enumerate(examples)))

    def run_mc(self, task: Task, example: Example, lettered: bool = False, stack=None) -> dict:
        text = task.generate_input(example)
        result = (stack or self.stack).run(text)
        stages = StackTarget._stages(result.stages)
        record = {"id": example.id, "question": example.question, "choices": list(example.choices),
                  "gold": example.answer, "input": text, "output": result.answer,
                  **decide(result.answer, example.choices, example.answer)}
        if result.votes:
            record["votes"] = list(result.votes)
            record["chosen_sample"] = result.chosen_sample
        return {**record, "generated_tokens": sum(s["generated_tokens"] for s in stages), "stages": stages}

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()
        if self.decoders is not None:
            self.decoders.close()


def open_target(ref: str, n_threads: int, max_new_tokens: int = GEN_MAX_TOKENS, cache_folder: Path | None = None,
                batch: int = 1):
    """A ``.toml`` file (optionally with ``[stage.key=value,...]`` settings) is
    a stack; anything else a model reference. A stack keeps its earlier
    stages' texts in ``cache_folder`` (see ``fslm_edge.stagecache``). ``batch``:
    multiple-choice questions scored at a time by a single model."""
    if ref.endswith(".toml") or (ref.endswith("]") and ".toml[" in ref):
        return StackTarget(ref, cache_folder)
    return ModelTarget(ref, n_threads, max_new_tokens=max_new_tokens, batch=batch)


@dataclass(frozen=True)
class TaskRun:
    task: Task
    path: Path
    split: str
    examples: tuple[Example, ...]
    bad: tuple[BadRow, ...] = field(default=())


def example_key(example: Example) -> str:
    blob = json.dumps([example.id, example.question, list(example.choices), example.answer, example.context])
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def format_signature(task: Task, lettered: bool) -> str:
    """The task's prompt format rendered on a fixed example: a changed format
    gives a new cache."""
    sample = Example("sig", "Q _ q", 0, ("a", "b"), "C")
    parts = [task.gen_prompt(sample), task.stack_input(sample)]
    if task.kind == "mc":
        parts += [f"{c}|{k}" for c, k in task.requests(sample, lettered)] + task.stack_continuations(sample, lettered)
    return "\n".join(parts)


class ExampleCache:
    """Append-only JSONL of finished examples for one (target, task, mode,
    settings). Likelihood mode's key is what it was before modes existed, so
    its caches stay valid."""

    def __init__(self, folder: Path, target_fingerprint: str, task: Task, lettered: bool,
                 mode: str = "likelihood"):
        key = [CACHE_VERSION, target_fingerprint, task.name, task.kind, lettered, format_signature(task, lettered)]
        if mode != "likelihood":
            samples = [Example("sig", "Q _ q", 0, choices, "C") for choices in (("a", "b"), ("yes", "no"))]
            key += [mode, GENERATE_CACHE_VERSION, *(task.generate_input(sample) for sample in samples)]
        settings = json.dumps(key)
        self.path = Path(folder) / f"{hashlib.sha1(settings.encode()).hexdigest()[:20]}.jsonl"
        self.records: dict[str, dict] = {e["key"]: e["record"] for e in read_records(self.path)}

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        append_record(self.path, {"key": key, "record": record})
        self.records[key] = record


def default_cache_dir() -> Path:
    return cache_dir() / "eval"


def evaluate(target, run: TaskRun, lettered: bool = False, cache: ExampleCache | None = None) -> Iterator[dict]:
    """One record per example of ``run`` on ``target`` (cached ones marked).
    A target with ``batch`` > 1 scores multiple-choice questions that many at
    a time; each then reports the batch's seconds shared equally."""
    size = getattr(target, "batch", 1) if run.task.kind == "mc" else 1
    for start in range(0, len(run.examples), size):
        chunk = run.examples[start: start + size]
        keys = [example_key(example) for example in chunk]
        found = {key: cache.get(key) for key in keys} if cache is not None else {}
        for key, record in found.items():
            if record is not None and _rematched(record) is not record:
                found[key] = _rematched(record)
                cache.put(key, found[key])
        todo = [example for example, key in zip(chunk, keys) if found.get(key) is None]
        computed = iter(_compute(target, run, todo, lettered) if todo else [])
        for key in keys:
            if found.get(key) is not None:
                yield {**found[key], "cached": True}
                continue
            record = next(computed)
            if cache is not None:
                cache.put(key, record)
            yield {**record, "cached": False}


def _compute(target, run: TaskRun, examples: list[Example], lettered: bool) -> list[dict]:
    started = time.perf_counter()
    if run.task.kind == "mc" and len(examples) > 1:
        records = target.run_mc_many(run.task, examples, lettered)
    elif run.task.kind == "mc":
        records = [target.run_mc(run.task, examples[0], lettered)]
    else:
        records = [target.run_gen(run.task, examples[0])]
    seconds = (time.perf_counter() - started) / len(records)
    for record in records:
        record["seconds"] = seconds + record.pop("reused_seconds", 0.0)
    return records
