"""Stage training data: JSONL rows -> prompt/target token ids.

The prompt is made by :func:`fslm_edge.prompts.stage_prompt` (the runtime's
own function) and tokenized by llama.cpp with the base GGUF's vocabulary, the
same call the runtime makes, so train and serve see identical token ids. The
target is followed by the token that ends a turn in the chat template.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fslm_edge.config import INPUT_FIELDS, StageConfig
from fslm_edge.errors import DatasetError, InputError
from fslm_edge.formats import continuation, derived_field
from fslm_edge.fileio import read_jsonl, sha256_file
from fslm_edge.options import input_values
from fslm_edge.prompts import Prompt, stage_prompt
from fslm_edge.recipe import DataSource, TrainRecipe

from .upstream import MODEL_OUTPUT, model_fields



@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]  # prompt tokens then target tokens (+ end of turn)
    n_prompt: int

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass(frozen=True)
class StageData:
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    file_hashes: dict[str, str] = field(default_factory=dict)
    skipped_too_long: int = 0


class GGUFTokenizer:
    """llama.cpp's tokenizer of a GGUF (vocabulary only) and its chat template,
    through the runtime's engine: prompts tokenize exactly as the runtime does
    (special tokens only in the templates' own text)."""

    def __init__(self, gguf_path: Path):
        from fslm_edge.engine import LoadedModel

        self.model = LoadedModel(gguf_path, 512, 1, vocab_only=True)
        self.chat = self.model.chat_template
        self.end_id = self.model.end_of_turn_token()

    def prompt_ids(self, prompt) -> list[int]:
        return self.model.tokenize_prompt(prompt)

    def text_ids(self, text: str) -> list[int]:
        return self.model.tokenize_plain(text)

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> GGUFTokenizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a JSONL or JSONL.gz file; DatasetError names file:line."""
    return read_jsonl(path, fix="fix or delete the line")


def field_text(row: dict, key: str, where: str) -> str:
    """A row field as text; lists (StrategyQA ``facts``) are joined by newlines.
    Multiple-choice rows also have the derived fields of ``fslm_edge.formats``
    (``question_with_choices``, ``answer_text``, ``answer_letter``)."""
    if key not in row:
        try:
            derived = derived_field(row, key)
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        if derived is not None:
            return derived
    if key not in row:
        raise DatasetError(f"{where}: no field '{key}' (the row has: {', '.join(sorted(row)) or 'nothing'})")
    value = row[key]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        value = "\n".join(str(v) for v in value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field '{key}' must be text or a list of texts, not {type(value).__name__}")
    if not value.strip():
        raise DatasetError(f"{where}: field '{key}' is empty")
    return value


def check_fields(stage: StageConfig, recipe: TrainRecipe) -> None:
    for index, source in enumerate(recipe.data):
        mapped = set(source.field_map)
        if "input" in mapped:  # {question} and {options} come from the input, as at run time
            mapped |= set(INPUT_FIELDS)
        missing = [f for f in stage.fields if f not in mapped]
        if missing:
            raise InputError(f"stage '{stage.name}': data[{index}] ({source.file}) maps no row field to template "
                             f"field(s) {', '.join('{' + m + '}' for m in missing)}; add them to fields = {{...}}")


def _split_source(path: Path, source: DataSource, recipe: TrainRecipe, seed: int):
    rows = list(iter_rows(path))
    if not rows:
        raise DatasetError(f"{path}: the dataset is empty (no JSON rows)")
    random.Random(seed).shuffle(rows)
    if source.max_examples:
        rows = rows[: source.max_examples]
    n_val = round(len(rows) * recipe.val_fraction)
    if recipe.val_fraction > 0 and len(rows) >= 2:
        n_val = max(1, n_val)
    return rows[n_val:], rows[:n_val]


def _mix(train_parts: list[list], recipe: TrainRecipe, seed: int) -> list:
    """Weighted mixture; a source asked for more rows than it has is repeated."""
    total = recipe.max_examples or sum(len(p) for p in train_parts)
    weights = [s.weight for s in recipe.data]
    mixed = []
    for part, weight in zip(train_parts, weights):
        quota = max(1, round(total * weight / sum(weights))) if part else 0
        mixed.extend(part[i % len(part)] for i in range(quota))
    random.Random(seed).shuffle(mixed)
    if recipe.few_shot:
        mixed = mixed[: recipe.few_shot]
    return mixed


def find_data_file(name: str, data_dirs, stage: str) -> Path:
    """A recipe's data file: in the first of ``data_dirs`` (a folder or several) that has it."""
    folders = [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else [Path(d) for d in data_dirs]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    where = folders[0] / name if len(folders) == 1 else f"{name} in {', '.join(map(str, folders))}"
    raise DatasetError(f"stage '{stage}': data file not found: {where}")


def load_stage_data(stage: StageConfig, data_dir, tokenizer: GGUFTokenizer, upstream=None) -> StageData:
    """Read, split, mix, render and tokenize a stage's training data.
    ``data_dir``: a folder, or several searched in order (a recipe's file is
    taken from the first that has it).

    ``upstream`` (a :class:`convert.upstream.UpstreamOutputs`) fills the
    fields the recipe maps to ``"@model"`` with the earlier stages' outputs."""
    recipe = stage.train
    if recipe is None:
        raise InputError(f"stage '{stage.name}' has no [stage.train] recipe; add one to build it")
    check_fields(stage, recipe)
    if upstream is None and model_fields(stage):
        raise InputError(f"stage '{stage.name}' maps fields to \"@model\"; build it with the stack "
                         "(fslm-edge build) so the earlier stages can run")
    train_parts, val_rows, hashes = [], [], {}
    for index, source in enumerate(recipe.data):
        path = find_data_file(source.file, data_dir, stage.name)
        hashes[source.file] = sha256_file(path)
        train, val = _split_source(path, source, recipe, recipe.seed + index)
        train_parts.append([(path, source, n, row) for n, row in train])
        val_rows.extend((path, source, n, row) for n, row in val)
    mixed = _mix(train_parts, recipe, recipe.seed)
    random.Random(recipe.seed).shuffle(val_rows)
    train, skipped = _encode_all(stage, mixed, tokenizer, recipe.max_seq_len, upstream)
    val, _ = _encode_all(stage, val_rows[: recipe.val_examples], tokenizer, recipe.max_seq_len, upstream)
    if not train:
        raise DatasetError(f"stage '{stage.name}': no training example fits max_seq_len = {recipe.max_seq_len} "
                           f"({skipped} too long)")
    return StageData(tuple(train), tuple(val), hashes, skipped)


def _encode_all(stage, items, tokenizer, max_len, upstream=None) -> tuple[list[Example], int]:
    out, skipped, cache = [], 0, {}
    for path, source, number, row in items:
        key = (str(path), number)
        if key not in cache:
            cache[key] = encode_row(stage, source, row, tokenizer, f"{path}:{number}", upstream)
        example = cache[key]
        if len(example.ids) > max_len:
            skipped += 1
            continue
        out.append(example)
    return out, skipped


def _without_trailing_spaces(prompt: Prompt) -> Prompt:
    """A trailing space of the prompt belongs to the target (" Paris")."""
    parts = list(prompt.parts)
    while parts and not parts[-1][0].rstrip(" "):
        parts.pop()
    if parts:
        parts[-1] = (parts[-1][0].rstrip(" "), parts[-1][1])
    return Prompt(tuple(parts))


def encode_row(stage: StageConfig, source: DataSource, row: dict, tokenizer: GGUFTokenizer, where: str,
               upstream=None) -> Example:
    values = {name: field_text(row, key, where) for name, key in source.field_map.items() if key != MODEL_OUTPUT}
    if len(values) < len(source.field_map):
        outputs = upstream.outputs(values["input"])
        values.update({name: outputs[name] for name, key in source.field_map.items() if key == MODEL_OUTPUT})
    if "input" in values:  # {question} and {options}, as the runtime derives them from the input
        values = {**input_values(values["input"]), **values}
    # A trailing space of the prompt belongs to the target (" Paris"), as evaluation tokenizes a choice.
    prompt = _without_trailing_spaces(stage_prompt(stage, values, tokenizer.chat))
    target = continuation(prompt.text, field_text(row, source.target, where))
    prompt_ids = tokenizer.prompt_ids(prompt)
    target_ids = tokenizer.text_ids(target) + [tokenizer.end_id]
    return Example(tuple(prompt_ids + target_ids), len(prompt_ids))
