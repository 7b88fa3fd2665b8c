"""Stack files: TOML parsed once into frozen dataclasses.

Precedence: built-in defaults < the TOML file < overrides (``--set
stage.key=value``). Unknown keys, wrong types, bad templates and references to
unknown or later stages are :class:`StackFileError` naming the file, the line
where possible, the key and the closest valid name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from .errors import InputError, StackFileError
from .fileio import read_small_text
from .keys import REQUIRED, Key, between, by_name, check_table, short_repr, suggest
from .recipe import TrainRecipe, parse_recipe
from .templates import TemplateSyntaxError, template_fields

DEFAULT_MODEL = "smollm2-135m-instruct"
RESERVED_NAMES = ("input", "stack")
SELECTORS = ("majority", "likelihood", "mean-likelihood")
WHEN_VALUES = ("always", "options", "no_options", "lettered", "yes_no")
MAX_CONTEXT = 1 << 20  # tokens; llama.cpp models here have 8k-128k
MAX_SAMPLES = 64
MAX_NESTING = 64  # TOML tables and arrays inside each other (tomllib recurses)
MAX_STACK_FILE_BYTES = 4 << 20
MAX_SCHEMA_FILE_BYTES = 1 << 20


def default_threads() -> int:
    """Threads for a model when the stack says 0: one fewer than the cores this
    process may use (at least 1, at most 8). llama.cpp's worker threads spin
    while they wait, so a thread per core collapses (about 25x slower here) as
    soon as another process keeps one core busy; a core left free keeps a shared
    machine usable (``benchmarks/bench_runtime.py`` measures both)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


_POSITIVE_INT = "a positive integer"
_BOOL = "true or false"

STACK_KEYS: tuple[Key, ...] = (
    Key("name", (str,), REQUIRED, "a string", "the stack's name (the model id `serve` gives it)"),
    Key("description", (str,), "", "a string", "one line shown by `info`", shown_default="\"\""),
    Key("model", (str,), DEFAULT_MODEL, "a model reference string",
        "default model of every stage: a built-in name, a `.gguf` path (relative to the file) or `hf://owner/repo/file.gguf`"),
    Key("context_size", (int,), 2048, f"an integer in [16, {MAX_CONTEXT}]", "tokens of context per model",
        between(16, MAX_CONTEXT)),
    Key("threads", (int,), 0, "an integer in [0, 256] (0 = automatic)",
        "llama.cpp threads; 0 = one fewer than the cores (at least 1, at most 8)", between(0, 256)),
    Key("batch_size", (int,), 512, f"an integer in [1, {MAX_CONTEXT}]", "prompt tokens decoded per llama.cpp batch",
        between(1, MAX_CONTEXT)),
    Key("gpu_layers", (int,), 0, "an integer >= -1 (-1 = all)",
        "layers offloaded to the GPU (-1 = all); a CPU-only build warns and runs on the CPU", lambda v: v >= -1),
    Key("show_choices", (bool,), True, _BOOL,
        "likelihood evaluation: whether `{input}` lists the lettered choices after the question"),
    Key("drop_bos", (bool,), False, _BOOL, "every stage's default for `drop_bos`"),
)

STAGE_KEYS: tuple[Key, ...] = (
    Key("name", (str,), REQUIRED, "a string", "unique; later templates refer to it as `{name}`"),
    Key("template", (str,), REQUIRED, "a string",
        "the user text: `{input}`, `{question}`, `{options}` and earlier stages' `{name}`"),
    Key("model", (str,), None, "a model reference string", "this stage's model", shown_default="[stack] model"),
    Key("adapter", (str,), None, "a path to a LoRA GGUF file", "LoRA GGUF over the model, relative to the stack file"),
    Key("adapter_scale", (int, float), 1.0, "a number in [-100, 100]", "LoRA scale (0 = no adapter)",
        between(-100, 100)),
    Key("chat", (bool,), True, _BOOL, "wrap the text in the model's chat template"),
    Key("drop_bos", (bool,), False, _BOOL, "drop the chat template's leading BOS text (adapters trained that way)",
        shown_default="[stack] drop_bos"),
    Key("system", (str,), None, "a string", "system prompt"),
    Key("calculator", (bool,), False, _BOOL, "the runtime writes the value after `<arithmetic> =`"),
    Key("samples", (int,), 1, f"an integer in [1, {MAX_SAMPLES}]",
        "self-consistency: run this stage and the later ones k times", between(1, MAX_SAMPLES)),
    Key("select", (str,), "majority", '"majority", "likelihood" or "mean-likelihood"',
        "how the answer is picked among samples", values=SELECTORS),
    Key("when", (str,), "always", '"always", "options", "no_options", "lettered" or "yes_no"',
        "run only for questions with options (`options`: lettered ones, or a yes/no request) or without "
        "(`no_options`), or only with lettered options (`lettered`) or only for a yes/no request (`yes_no`)",
        values=WHEN_VALUES),
    Key("choices", (list,), None, "a non-empty list of non-empty strings",
        "structured output: the text is exactly one of these strings",
        lambda v: bool(v) and all(isinstance(c, str) and c for c in v)),
    Key("choices_from_input", (bool,), False, _BOOL,
        "structured output: when the question lists lettered options, the text is exactly one option's text"),
    Key("choices_by", (str,), "grammar", '"grammar", "likelihood", "total" or "calibrated"',
        "how a choice is made: sampled under a grammar; the choice the model finds most likely per byte "
        "(`likelihood`) or whole (`total`: its log-probability); or the one whose likelihood the question "
        "raises most (its log-probability minus that after the same prompt with the question \"N/A\" and no "
        "earlier stages' text)",
        values=("grammar", "likelihood", "total", "calibrated")),
    Key("grammar", (str,), None, "a path to a GBNF file",
        "structured output: llama.cpp GBNF, relative to the stack file"),
    Key("json_schema", (str, dict), None, "a path to a JSON file or an inline table",
        "structured output: the text is JSON that validates against this schema"),
    Key("max_tokens", (int,), 256, f"an integer in [1, {MAX_CONTEXT}]", "most tokens generated",
        between(1, MAX_CONTEXT)),
    Key("temperature", (int, float), 0.0, "a number in [0, 100]", "0 = greedy", between(0, 100)),
    Key("top_p", (int, float), 0.95, "a number in (0, 1]", "nucleus sampling", lambda v: 0 < v <= 1),
    Key("top_k", (int,), 40, "an integer in [0, 1000000]", "top-k sampling (0 = off)", between(0, 1_000_000)),
    Key("min_p", (int, float), 0.05, "a number in [0, 1]", "min-p sampling", between(0, 1)),
    Key("repeat_penalty", (int, float), 1.1, "a number in (0, 100]", "llama.cpp repeat penalty",
        lambda v: 0 < v <= 100),
    Key("seed", (int,), None, "an integer in [0, 2**32)", "sampling seed", between(0, 2**32 - 1)),
    Key("stop", (list,), (), "a list of non-empty strings", "stop strings (not part of the text)",
        lambda v: all(isinstance(s, str) and s for s in v), shown_default="[]"),
    Key("train", (dict,), None, "a table (the stage's training recipe)", "the `[stage.train]` recipe (below)"),
)
_STACK = by_name(STACK_KEYS)
_STAGE = by_name(STAGE_KEYS)
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop")
_TOP_KEYS = ("stack", "stage")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = _STAGE["max_tokens"].default
    temperature: float = _STAGE["temperature"].default
    top_p: float = _STAGE["top_p"].default
    top_k: int = _STAGE["top_k"].default
    min_p: float = _STAGE["min_p"].default
    repeat_penalty: float = _STAGE["repeat_penalty"].default
    seed: int | None = _STAGE["seed"].default
    stop: tuple[str, ...] = _STAGE["stop"].default


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
    calculator: bool = False
    samples: int = 1
    select: str = "majority"
    drop_bos: bool = False
    choices: tuple[str, ...] | None = None
    choices_from_input: bool = False
    when: str = "always"  # "options" / "no_options": run only when the question lists options / does not
    choices_by: str = "grammar"  # otherwise each choice is scored whole (stack.pick_by_likelihood)
    grammar: str | None = None  # GBNF text, read from grammar_file
    grammar_file: Path | None = None
    json_schema: dict | None = None
    source: str = ""  # the stack file, for error messages

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
    threads: int = 0
    batch_size: int = 512
    show_choices: bool = True
    gpu_layers: int = 0
    source: str = ""  # what was loaded: the stack file, or the model reference of a one-stage stack

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
        return self.threads if self.threads > 0 else default_threads()


def _toml(text: str):
    """tomllib.loads, with nesting bounded first (tomllib recurses per level)."""
    depth = 0
    deepest = 0
    for char in text:  # brackets and braces inside strings count too: a bound, not a parser
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_NESTING:
        raise tomllib.TOMLDecodeError(f"arrays or tables nested more than {MAX_NESTING} deep")
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError(f"arrays or tables nested more than {MAX_NESTING} deep") from None
    except ValueError as exc:  # an integer of thousands of digits (Python refuses to convert it)
        if isinstance(exc, tomllib.TOMLDecodeError):
            raise
        raise tomllib.TOMLDecodeError(f"a value cannot be read ({exc})") from None


def parse_override_items(items, what: str = "--set") -> dict[str, object]:
    """``stage.key=value`` pairs (also ``*.key``, ``stack.key``); values are
    TOML literals, else strings."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise InputError(f"{what} {item!r}: write stage.key=value (e.g. answer.temperature=0.7)")
        if "\x00" in item:
            raise InputError(f"{what} {short_repr(item)}: contains a NUL character")
        try:
            value = _toml(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as exc:
            if "nested" in str(exc) or "cannot be read" in str(exc):
                raise InputError(f"{what} {short_repr(item)}: {exc}") from None
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


def is_stack_ref(ref: str) -> bool:
    """Whether ``ref`` names a stack file (``.toml``, maybe with ``[settings]``)
    rather than a model."""
    path, _ = split_stack_ref(ref)
    return path.endswith(".toml")


def load_target_config(ref: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> StackConfig:
    """A stack file, or a model reference as a one-stage chat stack named after
    the model (``builtin:smollm2-135m-instruct``, ``model.gguf``): what ``run``,
    ``serve`` and ``eval --mode generate`` accept."""
    ref = os.fspath(ref)
    if is_stack_ref(ref) or Path(ref).suffix == ".toml":
        path, inline = split_stack_ref(ref)
        return load_stack_config(path, {**inline, **(overrides or {})})
    return model_stack_config(ref, overrides)


def greedy_overrides(config: StackConfig) -> dict[str, float]:
    """Settings that run every stage at temperature 0 as ``fslm-edge run`` would
    at temperature 0; a stage with ``samples`` > 1 keeps its seeded sampling."""
    return {f"{s.name}.temperature": 0.0 for s in config.stages if s.samples == 1}


def model_stack_config(ref: str, overrides: Mapping[str, Any] | None = None) -> StackConfig:
    """One stage, ``template = "{input}"``, chat on: the model as a user types to it."""
    name = Path(ref.removeprefix("builtin:")).name.removesuffix(".gguf") or "model"
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
    text = f"[stack]\nname = {json.dumps(safe)}\nmodel = {json.dumps(ref)}\n\n" \
           '[[stage]]\nname = "answer"\ntemplate = "{input}"\n'
    config = parse_stack_text(text, Path.cwd() / f"{safe}.model", overrides)
    return dataclasses.replace(config, source=ref)


def load_stack_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> StackConfig:
    """Read and validate a stack file; ``overrides`` maps ``stage.key`` (or
    ``*.key`` for every stage, ``stack.key`` for the stack) to a value."""
    if "\x00" in os.fspath(path):
        raise StackFileError(short_repr(os.fspath(path)), "the path contains a NUL character")
    path = Path(path)
    if not path.exists():
        raise StackFileError(path, "no such stack file; check the path (stacks live in stacks/*.toml)")
    try:
        source = read_small_text(path, MAX_STACK_FILE_BYTES)
    except ValueError as exc:
        raise StackFileError(path, f"cannot be a stack file: {exc}") from None
    except OSError as exc:
        raise StackFileError(path, f"cannot read the file ({exc.strerror or exc})") from None
    return parse_stack_text(source, path, overrides)


def parse_stack_text(source: str, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> StackConfig:
    path = Path(path)
    try:
        data = _toml(source)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else None)
        message = re.sub(r"\s*\(at line \d+, column (\d+)\)", r" (column \1)", str(exc))
        raise StackFileError(path, f"invalid TOML: {message}", line=line) from None
    ctx = _Context(path, source)
    _apply_overrides(data, overrides or {}, ctx)
    config = _build_config(data, ctx)
    return dataclasses.replace(config, source=str(path))


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


def _apply_overrides(data: dict, overrides: Mapping[str, Any], ctx: _Context) -> None:
    stages = data.get("stage") if isinstance(data.get("stage"), list) else []
    tables = [s for s in stages if isinstance(s, dict)]  # other entries are refused later, with their index
    names = [s.get("name") for s in tables]
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
            if key not in _STAGE:
                raise StackFileError(ctx.path, f"override '{dotted}': unknown stage key '{key}'{suggest(key, _STAGE)}")
            for stage in tables:
                stage[key] = value
        elif target in names:
            tables[names.index(target)][key] = value
        else:
            valid = [n for n in names if isinstance(n, str)] + ["stack", "*"]
            raise StackFileError(ctx.path, f"override '{dotted}': no stage named '{target}'{suggest(target, valid)}")


def _check_keys(table: dict, keys: Mapping[str, Key], ctx: _Context, what: str, stage_index: int | None) -> None:
    found = check_table(table, keys)
    if found is not None:
        key, problem = found
        raise ctx.error(f"{what}: {problem}", key, stage_index)


def _build_config(data: dict, ctx: _Context) -> StackConfig:
    for key in data:
        if key not in _TOP_KEYS:
            raise StackFileError(ctx.path, f"unknown table '{key}'{suggest(key, _TOP_KEYS)}")
    stack = data.get("stack")
    if not isinstance(stack, dict):
        raise StackFileError(ctx.path, "missing [stack] table (it needs at least name = \"...\")")
    _check_keys(stack, _STACK, ctx, "[stack]", None)
    if "name" not in stack:
        raise ctx.error("[stack]: missing key 'name'")
    stage_tables = data.get("stage")
    if not isinstance(stage_tables, list) or not stage_tables:
        raise StackFileError(ctx.path, "no stages: add at least one [[stage]] table with name and template")
    values = {key.name: stack.get(key.name, key.default) for key in STACK_KEYS}
    all_names = {t["name"] for t in stage_tables if isinstance(t, dict) and isinstance(t.get("name"), str)}
    stages: list[StageConfig] = []
    for index, table in enumerate(stage_tables):
        stage = _build_stage(table, index, [s.name for s in stages], all_names, values, ctx)
        stages.append(stage)
    voting = [i for i, s in enumerate(stages) if s.samples > 1]
    if len(voting) > 1:
        raise ctx.error(f"stage '{stages[voting[1]].name}': only one stage may set samples > 1 (stage "
                        f"'{stages[voting[0]].name}' does; its later stages already run once per sample)",
                        "samples", voting[1])
    for stage in stages:
        if stage.sampling.max_tokens >= values["context_size"]:
            raise ctx.error(f"stage '{stage.name}': max_tokens {stage.sampling.max_tokens} leaves no room for the "
                            f"prompt in context_size {values['context_size']}; lower max_tokens",
                            "max_tokens", stages.index(stage))
    return StackConfig(
        path=ctx.path.resolve(),
        name=values["name"],
        stages=tuple(stages),
        description=values["description"],
        model=values["model"],
        context_size=values["context_size"],
        threads=values["threads"],
        batch_size=values["batch_size"],
        show_choices=values["show_choices"],
        gpu_layers=values["gpu_layers"],
    )


def _build_stage(table: Any, index: int, earlier: list[str], all_names: set, stack: dict,
                 ctx: _Context) -> StageConfig:
    if not isinstance(table, dict):
        raise ctx.error(f"stage #{index + 1} must be a table", None, index)
    _check_keys(table, _STAGE, ctx, f"stage #{index + 1}", index)
    for required in ("name", "template"):
        if required not in table:
            raise ctx.error(f"stage #{index + 1}: missing key '{required}'", None, index)
    values = {key.name: table.get(key.name, key.default) for key in STAGE_KEYS}
    name = values["name"]
    what = f"stage '{name}'"
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name[0].isdigit():
        raise ctx.error(f"{what}: name must be letters, digits, '_' or '-' (not starting with a digit)", "name", index)
    if name in RESERVED_NAMES:
        raise ctx.error(f"{what}: '{name}' is reserved; choose another stage name", "name", index)
    if name in earlier:
        raise ctx.error(f"{what}: duplicate stage name (stage names must be unique)", "name", index)
    try:
        fields = template_fields(values["template"])
    except TemplateSyntaxError as exc:
        raise ctx.error(f"{what}: bad template: {exc}", "template", index) from None
    for ref in fields:
        if ref in INPUT_FIELDS or ref in earlier:
            continue
        hint = " (a stage can only use stages defined before it)" if ref in all_names else ""
        raise ctx.error(
            f"{what}: template references unknown stage '{{{ref}}}'{hint}{suggest(ref, [*INPUT_FIELDS, *earlier])}",
            "template",
            index,
        )
    sampling = Sampling(**{key: values[key] for key in SAMPLING_KEYS})
    sampling = dataclasses.replace(
        sampling, stop=tuple(sampling.stop), temperature=float(sampling.temperature), top_p=float(sampling.top_p),
        min_p=float(sampling.min_p), repeat_penalty=float(sampling.repeat_penalty))
    _check_samples(values, what, index, ctx, "select" in table)
    try:
        train = parse_recipe(values["train"]) if values["train"] is not None else None
    except ValueError as exc:
        raise ctx.error(f"{what}: [train] {exc}", "train", index) from None
    constraints = [key for key in ("choices", "choices_from_input", "grammar", "json_schema") if table.get(key)]
    if len(constraints) > 1:
        raise ctx.error(f"{what}: give one of choices, choices_from_input, grammar and json_schema, not "
                        f"{' and '.join(constraints)}", constraints[1], index)
    if values["grammar"] and "\x00" in values["grammar"]:
        raise ctx.error(f"{what}: grammar path contains a NUL character", "grammar", index)
    grammar_file = ctx.path.parent / values["grammar"] if values["grammar"] else None
    adapter = values["adapter"]
    return StageConfig(
        name=name,
        template=values["template"],
        model=values["model"] or stack["model"],
        adapter=(ctx.path.parent / adapter) if adapter else None,
        adapter_scale=float(values["adapter_scale"]),
        chat=values["chat"],
        drop_bos=table.get("drop_bos", stack["drop_bos"]),
        system=values["system"],
        sampling=sampling,
        train=train,
        calculator=values["calculator"],
        samples=values["samples"],
        select=values["select"],
        choices=tuple(values["choices"]) if values["choices"] is not None else None,
        choices_from_input=values["choices_from_input"],
        when=values["when"],
        choices_by=values["choices_by"],
        grammar=_read_grammar(grammar_file, ctx, what, index) if grammar_file else None,
        grammar_file=grammar_file,
        json_schema=_read_schema(values["json_schema"], ctx, what, index),
        source=str(ctx.path),
    )


# Fields every template may use besides earlier stages: the question as typed, and, when it lists
# lettered options ("A. ..." lines), the question without them and the options alone (fslm_edge.options).
INPUT_FIELDS = ("input", "question", "options")


def _check_samples(values: dict, what: str, index: int, ctx: _Context, select_given: bool) -> None:
    samples = values["samples"]
    if samples > 1 and values["temperature"] <= 0:
        raise ctx.error(f"{what}: samples = {samples} needs temperature > 0 (at 0 every sample is the same); "
                        "set e.g. temperature = 0.7", "samples", index)
    if select_given and samples == 1:
        raise ctx.error(f"{what}: 'select' picks among samples; set samples > 1 (e.g. samples = 5)", "select", index)


def _read_side_file(path: Path, key: str, ctx: _Context, what: str, index: int) -> str:
    """A grammar or schema file named by a stage key, read whole (bounded)."""
    try:
        return read_small_text(path, MAX_SCHEMA_FILE_BYTES)
    except ValueError as exc:
        raise ctx.error(f"{what}: {key} file {path} cannot be used: {exc}", key, index) from None
    except OSError as exc:
        raise ctx.error(f"{what}: cannot read {key} file {path} ({exc.strerror or exc}); "
                        "the path is relative to the stack file", key, index) from None


def _read_grammar(path: Path, ctx: _Context, what: str, index: int) -> str:
    return _read_side_file(path, "grammar", ctx, what, index)


def _read_schema(value: str | dict | None, ctx: _Context, what: str, index: int) -> dict | None:
    if value is None or isinstance(value, dict):
        return value
    if "\x00" in value:
        raise ctx.error(f"{what}: json_schema path contains a NUL character", "json_schema", index)
    path = ctx.path.parent / value
    text = _read_side_file(path, "json_schema", ctx, what, index)
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StackFileError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno,
                             key="json_schema") from None
    except RecursionError:
        raise StackFileError(path, "JSON nested too deep", key="json_schema") from None
    if not isinstance(schema, dict):
        raise StackFileError(path, "a JSON schema must be an object", key="json_schema")
    return schema


def check_sampling_values(values: dict, what: str) -> dict:
    """Sampling settings from outside a stack file (a server request, a call's
    ``final``), checked by the same declarations; floats as floats."""
    for name, value in values.items():
        key = _STAGE.get(name)
        if key is None or name not in SAMPLING_KEYS:
            raise InputError(f"{what}: unknown setting '{name}'{suggest(name, SAMPLING_KEYS)}")
        problem = key.problem(list(value) if name == "stop" and isinstance(value, tuple) else value)
        if problem is not None:
            raise InputError(f"{what}: {problem}")
    out = dict(values)
    for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
        if name in out:
            out[name] = float(out[name])
    if "stop" in out:
        out["stop"] = tuple(out["stop"])
    return out
