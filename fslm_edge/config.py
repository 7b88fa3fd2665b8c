"""Stack files: TOML parsed once into frozen dataclasses.

Precedence: built-in defaults < the TOML file < overrides (``--set
stage.key=value``). Unknown keys, wrong types, bad templates and references to
unknown or later stages are :class:`StackFileError` naming the file, the line
where possible, the key and the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .errors import InputError, StackFileError
from .recipe import TrainRecipe, parse_recipe
from .templates import TemplateSyntaxError, template_fields

DEFAULT_MODEL = "smollm2-135m-instruct"
RESERVED_NAMES = ("input", "stack")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageConfig:
    name: str
    template: str
    model: str  # model reference (built-in name, path, hf://...), already defaulted
    adapter: Path | None = None
    adapter_scale: float = 1.0
    chat: bool = True
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    train: TrainRecipe | None = None
    # Write the value after "<arithmetic expression> =" instead of letting the model compute it.
    calculator: bool = False
    # Self-consistency: > 1 runs this stage (sampled, seeds seed, seed + 1, ...) and every later
    # stage that many times; ``select`` picks the answer: "majority" (the most common final
    # answer), "likelihood" (the sample whose text for this stage its model finds most likely) or
    # "mean-likelihood" (the same per token).
    samples: int = 1
    select: str = "majority"
    # Drop the chat template's leading BOS text even where the tokenizer adds none (prompts.py).
    drop_bos: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.template)


@dataclass(frozen=True)
class StackConfig:
    path: Path
    name: str
    stages: tuple[StageConfig, ...]
    description: str = ""
    model: str = DEFAULT_MODEL
    context_size: int = 2048
    threads: int = 0  # 0: one per physical core, at most 8
    batch_size: int = 512
    # Multiple-choice evaluation: whether the stack's {input} lists the lettered choices after the
    # question (true) or is the bare question (false). The choices are scored against the last stage
    # either way.
    show_choices: bool = True

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def n_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, min(8, os.cpu_count() or 1))


def parse_override_items(items, what: str = "--set") -> dict[str, object]:
    """``stage.key=value`` pairs (also ``*.key``, ``stack.key``); values are
    TOML literals, else strings."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise InputError(f"{what} {item!r}: write stage.key=value (e.g. answer.temperature=0.7)")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        overrides[key.strip()] = value
    return overrides


def split_stack_ref(ref: str) -> tuple[str, dict[str, object]]:
    """``'stacks/qa.toml[*.adapter_scale=0,answer.max_tokens=8]'`` -> the path
    and its overrides (a stack target with settings, e.g. for evaluation)."""
    if ref.endswith("]") and "[" in ref:
        path, _, inner = ref[:-1].partition("[")
        items = tuple(part.strip() for part in inner.split(",") if part.strip())
        return path, parse_override_items(items, f"target {ref!r}:")
    return ref, {}


# key -> (accepted python types, description used in errors)
_STACK_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "description": ((str,), "a string"),
    "model": ((str,), "a model reference string"),
    "context_size": ((int,), "a positive integer"),
    "threads": ((int,), "an integer (0 = automatic)"),
    "batch_size": ((int,), "a positive integer"),
    "show_choices": ((bool,), "true or false"),
    "drop_bos": ((bool,), "true or false"),
}
_STAGE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "template": ((str,), "a string"),
    "model": ((str,), "a model reference string"),
    "adapter": ((str,), "a path to a LoRA GGUF file"),
    "adapter_scale": ((int, float), "a number"),
    "chat": ((bool,), "true or false"),
    "drop_bos": ((bool,), "true or false"),
    "system": ((str,), "a string"),
    "calculator": ((bool,), "true or false"),
    "samples": ((int,), "an integer >= 1"),
    "select": ((str,), '"majority", "likelihood" or "mean-likelihood"'),
    "max_tokens": ((int,), "a positive integer"),
    "temperature": ((int, float), "a number >= 0"),
    "top_p": ((int, float), "a number in (0, 1]"),
    "top_k": ((int,), "an integer >= 0"),
    "min_p": ((int, float), "a number in [0, 1]"),
    "repeat_penalty": ((int, float), "a number > 0"),
    "seed": ((int,), "an integer"),
    "stop": ((list,), "a list of strings"),
    "train": ((dict,), "a table (the stage's training recipe)"),
}
SELECTORS = ("majority", "likelihood", "mean-likelihood")
_SAMPLING_KEYS = {f.name for f in dataclasses.fields(Sampling)}
_TOP_KEYS = ("stack", "stage")


def load_stack_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> StackConfig:
    """Read and validate a stack file; ``overrides`` maps ``stage.key`` (or
    ``*.key`` for every stage, ``stack.key`` for the stack) to a value."""
    path = Path(path)
    if not path.is_file():
        raise StackFileError(path, "no such stack file; check the path (stacks live in stacks/*.toml)")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StackFileError(path, f"cannot read the file as UTF-8 text ({exc})") from None
    return parse_stack_text(source, path, overrides)


def parse_stack_text(source: str, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> StackConfig:
    path = Path(path)
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else None)
        message = re.sub(r"\s*\(at line \d+, column (\d+)\)", r" (column \1)", str(exc))
        raise StackFileError(path, f"invalid TOML: {message}", line=line) from None
    ctx = _Context(path, source)
    _apply_overrides(data, overrides or {}, ctx)
    return _build_config(data, ctx)


class _Context:
    """Where errors point: the file and, when findable, the line."""

    def __init__(self, path: Path, source: str):
        self.path = path
        self.lines = source.splitlines()

    def error(self, message: str, key: str | None = None, stage_index: int | None = None) -> StackFileError:
        return StackFileError(self.path, message, line=self.find_line(key, stage_index), key=key)

    def find_line(self, key: str | None, stage_index: int | None) -> int | None:
        header = "[stack]" if stage_index is None else "[[stage]]"
        seen = -1
        start = None
        for number, text in enumerate(self.lines, 1):
            if text.strip().replace(" ", "") == header:
                seen += 1
                if stage_index is None or seen == stage_index:
                    start = number
                    break
        if start is None:
            return None
        if key is None:
            return start
        for number in range(start, len(self.lines)):
            text = self.lines[number].strip()
            if text.startswith("["):
                break
            if text.split("=", 1)[0].strip().strip('"') == key:
                return number + 1
        return start


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(valid))})"


def _apply_overrides(data: dict, overrides: Mapping[str, Any], ctx: _Context) -> None:
    stages = data.get("stage") if isinstance(data.get("stage"), list) else []
    names = [s.get("name") if isinstance(s, dict) else None for s in stages]
    for dotted, value in overrides.items():
        target, _, key = str(dotted).partition(".")
        if not key:
            raise StackFileError(
                ctx.path, f"override '{dotted}' must look like stage.key=value, *.key=value or stack.key=value")
        if target == "stack":
            if not isinstance(data.get("stack"), dict):
                data["stack"] = {}
            data["stack"][key] = value
        elif target == "*":
            if key not in _STAGE_KEYS:
                raise StackFileError(
                    ctx.path, f"override '{dotted}': unknown stage key '{key}'{_suggest(key, _STAGE_KEYS)}")
            for stage in stages:
                stage[key] = value
        elif target in names:
            stages[names.index(target)][key] = value
        else:
            valid = [n for n in names if isinstance(n, str)] + ["stack", "*"]
            raise StackFileError(ctx.path, f"override '{dotted}': no stage named '{target}'{_suggest(target, valid)}")


def _check_keys(table: dict, spec: Mapping, ctx: _Context, what: str, stage_index: int | None) -> None:
    for key, value in table.items():
        if key not in spec:
            raise ctx.error(f"{what}: unknown key '{key}'{_suggest(key, spec)}", key, stage_index)
        types, description = spec[key]
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            raise ctx.error(f"{what}: '{key}' must be {description}, not {value!r}", key, stage_index)


def _build_config(data: dict, ctx: _Context) -> StackConfig:
    for key in data:
        if key not in _TOP_KEYS:
            raise StackFileError(ctx.path, f"unknown table '{key}'{_suggest(key, _TOP_KEYS)}")
    stack = data.get("stack")
    if not isinstance(stack, dict):
        raise StackFileError(ctx.path, "missing [stack] table (it needs at least name = \"...\")")
    _check_keys(stack, _STACK_KEYS, ctx, "[stack]", None)
    if "name" not in stack:
        raise ctx.error("[stack]: missing key 'name'")
    for key in ("context_size", "batch_size"):
        if key in stack and stack[key] <= 0:
            raise ctx.error(f"[stack]: '{key}' must be a positive integer", key)
    if stack.get("threads", 0) < 0:
        raise ctx.error("[stack]: 'threads' must be >= 0 (0 = automatic)", "threads")
    stage_tables = data.get("stage")
    if not isinstance(stage_tables, list) or not stage_tables:
        raise StackFileError(ctx.path, "no stages: add at least one [[stage]] table with name and template")
    default_model = stack.get("model", DEFAULT_MODEL)
    all_names = {t["name"] for t in stage_tables if isinstance(t, dict) and isinstance(t.get("name"), str)}
    stages: list[StageConfig] = []
    for index, table in enumerate(stage_tables):
        stage = _build_stage(table, index, [s.name for s in stages], all_names, default_model, ctx)
        if "drop_bos" not in table:  # the stack's setting is every stage's default
            stage = dataclasses.replace(stage, drop_bos=stack.get("drop_bos", False))
        stages.append(stage)
    voting = [i for i, s in enumerate(stages) if s.samples > 1]
    if len(voting) > 1:
        raise ctx.error(f"stage '{stages[voting[1]].name}': only one stage may set samples > 1 (stage "
                        f"'{stages[voting[0]].name}' does; its later stages already run once per sample)",
                        "samples", voting[1])
    return StackConfig(
        path=ctx.path.resolve(),
        name=stack["name"],
        stages=tuple(stages),
        description=stack.get("description", ""),
        model=default_model,
        context_size=stack.get("context_size", 2048),
        threads=stack.get("threads", 0),
        batch_size=stack.get("batch_size", 512),
        show_choices=stack.get("show_choices", True),
    )


def _build_stage(table: Any, index: int, earlier: list[str], all_names: set, default_model: str,
                 ctx: _Context) -> StageConfig:
    if not isinstance(table, dict):
        raise ctx.error(f"stage #{index + 1} must be a table", None, index)
    _check_keys(table, _STAGE_KEYS, ctx, f"stage #{index + 1}", index)
    for required in ("name", "template"):
        if required not in table:
            raise ctx.error(f"stage #{index + 1}: missing key '{required}'", None, index)
    name = table["name"]
    what = f"stage '{name}'"
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name[0].isdigit():
        raise ctx.error(f"{what}: name must be letters, digits, '_' or '-' (not starting with a digit)", "name", index)
    if name in RESERVED_NAMES:
        raise ctx.error(f"{what}: '{name}' is reserved; choose another stage name", "name", index)
    if name in earlier:
        raise ctx.error(f"{what}: duplicate stage name (stage names must be unique)", "name", index)
    try:
        fields = template_fields(table["template"])
    except TemplateSyntaxError as exc:
        raise ctx.error(f"{what}: bad template: {exc}", "template", index) from None
    for ref in fields:
        if ref == "input" or ref in earlier:
            continue
        hint = " (a stage can only use stages defined before it)" if ref in all_names else ""
        raise ctx.error(
            f"{what}: template references unknown stage '{{{ref}}}'{hint}{_suggest(ref, ['input', *earlier])}",
            "template",
            index,
        )
    sampling = _build_sampling(table, what, index, ctx)
    adapter = table.get("adapter")
    try:
        train = parse_recipe(table["train"]) if "train" in table else None
    except ValueError as exc:
        raise ctx.error(f"{what}: [train] {exc}", "train", index) from None
    return StageConfig(
        name=name,
        template=table["template"],
        model=table.get("model", default_model),
        adapter=(ctx.path.parent / adapter) if adapter else None,
        adapter_scale=float(table.get("adapter_scale", 1.0)),
        chat=table.get("chat", True),
        drop_bos=table.get("drop_bos", False),
        system=table.get("system"),
        sampling=sampling,
        train=train,
        calculator=table.get("calculator", False),
        samples=_samples(table, sampling, what, index, ctx),
        select=_select(table, what, index, ctx),
    )


def _samples(table: dict, sampling: Sampling, what: str, index: int, ctx: _Context) -> int:
    samples = table.get("samples", 1)
    if samples < 1:
        raise ctx.error(f"{what}: 'samples' must be an integer >= 1, not {samples!r}", "samples", index)
    if samples > 1 and sampling.temperature <= 0:
        raise ctx.error(f"{what}: samples = {samples} needs temperature > 0 (at 0 every sample is the same); "
                        "set e.g. temperature = 0.7", "samples", index)
    return samples


def _select(table: dict, what: str, index: int, ctx: _Context) -> str:
    select = table.get("select", "majority")
    if select not in SELECTORS:
        raise ctx.error(f"{what}: unknown select {select!r}{_suggest(select, SELECTORS)}", "select", index)
    if "select" in table and table.get("samples", 1) == 1:
        raise ctx.error(f"{what}: 'select' picks among samples; set samples > 1 (e.g. samples = 5)", "select", index)
    return select


def _build_sampling(table: dict, what: str, index: int, ctx: _Context) -> Sampling:
    values = {k: table[k] for k in _SAMPLING_KEYS if k in table}
    checks = {
        "max_tokens": lambda v: v > 0,
        "temperature": lambda v: v >= 0,
        "top_p": lambda v: 0 < v <= 1,
        "top_k": lambda v: v >= 0,
        "min_p": lambda v: 0 <= v <= 1,
        "repeat_penalty": lambda v: v > 0,
    }
    for key, ok in checks.items():
        if key in values and not ok(values[key]):
            raise ctx.error(f"{what}: '{key}' must be {_STAGE_KEYS[key][1]}, not {values[key]!r}", key, index)
    if "stop" in values:
        stop = values["stop"]
        if not all(isinstance(s, str) and s for s in stop):
            raise ctx.error(f"{what}: 'stop' must be a list of non-empty strings", "stop", index)
        values["stop"] = tuple(stop)
    for key in ("temperature", "top_p", "min_p", "repeat_penalty"):
        if key in values:
            values[key] = float(values[key])
    return Sampling(**values)
