"""A stage's training recipe: the ``[stage.train]`` table of a stack file.

Pure parsing (no torch): the runtime validates recipes when it loads a stack,
the build side (``convert``) consumes them.

    [stage.train]
    data = [
      { file = "strategyqa_train.jsonl", weight = 2.0, fields = { input = "question" }, target = "facts" },
      { file = "alpaca_en_demo_train.jsonl", weight = 1.0, fields = { input = "instruction" }, target = "output" },
    ]
    max_examples = 4000   # after mixing
    rank = 8
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .keys import REQUIRED, Key, by_name, check_table


_POS = "a number > 0"
SOURCE_KEYS: tuple[Key, ...] = (
    Key("file", (str,), REQUIRED, "a file name", "JSONL(.gz) file, relative to --data-dir"),
    Key("target", (str,), REQUIRED, "a row field name", "the row field the stage must produce"),
    Key("fields", (dict,), {"input": "question"}, "a table of template field = row field",
        "template field -> row field (`\"@model\"`: what the trained earlier stages write)",
        lambda v: all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
        shown_default="{ input = \"question\" }"),
    Key("weight", (int, float), 1.0, _POS, "share of the mixture", lambda v: v > 0),
    Key("max_examples", (int,), None, "an integer > 0", "rows taken from this file at most", lambda v: v > 0),
)
RECIPE_KEYS: tuple[Key, ...] = (
    Key("data", (list,), REQUIRED, "a list of data tables", "the mixture: a list of `{ file, target, fields, weight, "
        "max_examples }`", bool),
    Key("max_examples", (int,), None, "an integer > 0", "training rows after mixing", lambda v: v > 0,
        shown_default="all rows"),
    Key("few_shot", (int,), None, "an integer > 0", "train on the first k mixed rows only", lambda v: v > 0),
    Key("val_fraction", (int, float), 0.05, "a number in [0, 1)", "held-out share of each file", lambda v: 0 <= v < 1),
    Key("val_examples", (int,), 256, "an integer > 0", "at most this many validation rows", lambda v: v > 0),
    Key("rank", (int,), 8, "an integer > 0", "LoRA rank", lambda v: 0 < v <= 4096),
    Key("alpha", (int, float), 16.0, _POS, "LoRA alpha", lambda v: v > 0),
    Key("dropout", (int, float), 0.05, "a number in [0, 1)", "LoRA dropout", lambda v: 0 <= v < 1),
    Key("target_modules", (list,), ("q_proj", "k_proj", "v_proj", "o_proj"), "a non-empty list of module names",
        "modules LoRA adapts", lambda v: bool(v) and all(isinstance(m, str) for m in v), shown_default="q/k/v/o"),
    Key("learning_rate", (int, float), 2e-4, _POS, "AdamW learning rate", lambda v: v > 0),
    Key("epochs", (int, float), 1.0, _POS, "passes over the mixture", lambda v: v > 0),
    Key("max_steps", (int,), None, "an integer > 0", "wins over epochs (and `--max-steps` over both)",
        lambda v: v > 0),
    Key("max_seq_len", (int,), 512, "an integer > 0", "packed sequence length", lambda v: 0 < v <= 1 << 20),
    Key("batch_tokens", (int,), 2048, "an integer > 0", "tokens per optimizer step", lambda v: 0 < v <= 1 << 24),
    Key("eval_every", (int,), 50, "an integer > 0", "steps between validation losses", lambda v: v > 0),
    Key("save_every", (int,), 50, "an integer > 0", "steps between checkpoints", lambda v: v > 0),
    Key("seed", (int,), 0, "an integer", "shuffling and initialisation seed"),
    Key("hf_base", (str,), None, "a folder path", "a Hugging Face safetensors folder (relative to the stack file) "
        "with the full-precision weights of the stage's GGUF model: trained and merged instead of the GGUF "
        "dequantized; a folder of another architecture or shape is refused"),
)
_SOURCE = by_name(SOURCE_KEYS)
_RECIPE = by_name(RECIPE_KEYS)


@dataclass(frozen=True)
class DataSource:
    """One JSONL file of the mixture and how its rows fill the template."""

    file: str  # relative to --data-dir
    target: str  # row field the stage must produce
    fields: tuple[tuple[str, str], ...] = (("input", "question"),)  # template field -> row field
    weight: float = _SOURCE["weight"].default
    max_examples: int | None = _SOURCE["max_examples"].default

    @property
    def field_map(self) -> dict[str, str]:
        return dict(self.fields)


@dataclass(frozen=True)
class TrainRecipe:
    data: tuple[DataSource, ...]
    max_examples: int | None = _RECIPE["max_examples"].default
    few_shot: int | None = _RECIPE["few_shot"].default
    val_fraction: float = _RECIPE["val_fraction"].default
    val_examples: int = _RECIPE["val_examples"].default
    rank: int = _RECIPE["rank"].default
    alpha: float = _RECIPE["alpha"].default
    dropout: float = _RECIPE["dropout"].default
    target_modules: tuple[str, ...] = _RECIPE["target_modules"].default
    learning_rate: float = _RECIPE["learning_rate"].default
    epochs: float = _RECIPE["epochs"].default
    max_steps: int | None = _RECIPE["max_steps"].default
    max_seq_len: int = _RECIPE["max_seq_len"].default
    batch_tokens: int = _RECIPE["batch_tokens"].default
    eval_every: int = _RECIPE["eval_every"].default
    save_every: int = _RECIPE["save_every"].default
    seed: int = _RECIPE["seed"].default
    # A Hugging Face safetensors folder (relative to the stack file) with the full-precision weights of the
    # stage's GGUF model: trained and merged instead of the GGUF dequantized (see convert/hf_base.py).
    hf_base: str | None = _RECIPE["hf_base"].default


def _check(table: Mapping[str, Any], keys: Mapping[str, Key], what: str) -> None:
    found = check_table(table, keys)
    if found is not None:
        raise ValueError(f"{what}{found[1]}")


def parse_source(table: Any, index: int) -> DataSource:
    what = f"data[{index}]: "
    if not isinstance(table, dict):
        raise ValueError(f"{what}each data entry must be a table like {{ file = ..., target = ... }}")
    _check(table, _SOURCE, what)
    for key in ("file", "target"):
        if key not in table:
            raise ValueError(f"{what}missing key '{key}'")
    field_map = table.get("fields", _SOURCE["fields"].default)
    return DataSource(
        file=table["file"],
        target=table["target"],
        fields=tuple(field_map.items()),
        weight=float(table.get("weight", 1.0)),
        max_examples=table.get("max_examples"),
    )


def parse_recipe(table: Mapping[str, Any]) -> TrainRecipe:
    """Validate a ``[stage.train]`` table; raises ValueError with the key."""
    if not table.get("data"):
        raise ValueError("missing 'data': a list of { file = ..., target = ..., fields = {...} } tables")
    _check(table, _RECIPE, "")
    modules = table.get("target_modules", _RECIPE["target_modules"].default)
    values = {f.name: table[f.name] for f in fields(TrainRecipe) if f.name in table}
    values["data"] = tuple(parse_source(t, i) for i, t in enumerate(table["data"]))
    values["target_modules"] = tuple(modules)
    for key in ("val_fraction", "alpha", "dropout", "learning_rate", "epochs"):
        if key in values:
            values[key] = float(values[key])
    return TrainRecipe(**values)
