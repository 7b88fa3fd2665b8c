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

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class DataSource:
    """One JSONL file of the mixture and how its rows fill the template."""

    file: str  # relative to --data-dir
    target: str  # row field the stage must produce
    fields: tuple[tuple[str, str], ...] = (("input", "question"),)  # template field -> row field
    weight: float = 1.0
    max_examples: int | None = None

    @property
    def field_map(self) -> dict[str, str]:
        return dict(self.fields)


@dataclass(frozen=True)
class TrainRecipe:
    data: tuple[DataSource, ...]
    max_examples: int | None = None
    few_shot: int | None = None  # train on k examples only
    val_fraction: float = 0.05
    val_examples: int = 256  # at most this many validation rows
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None
    max_seq_len: int = 512
    batch_tokens: int = 2048
    eval_every: int = 50
    save_every: int = 50
    seed: int = 0
    # A Hugging Face safetensors folder (relative to the stack file) with the full-precision weights of the
    # stage's GGUF model: trained and merged instead of the GGUF dequantized (see convert/hf_base.py).
    hf_base: str | None = None


_SOURCE_TYPES = {
    "file": (str,),
    "target": (str,),
    "fields": (dict,),
    "weight": (int, float),
    "max_examples": (int,),
}
_RECIPE_TYPES = {
    "data": (list,),
    "max_examples": (int,),
    "few_shot": (int,),
    "val_fraction": (int, float),
    "val_examples": (int,),
    "rank": (int,),
    "alpha": (int, float),
    "dropout": (int, float),
    "target_modules": (list,),
    "learning_rate": (int, float),
    "epochs": (int, float),
    "max_steps": (int,),
    "max_seq_len": (int,),
    "batch_tokens": (int,),
    "eval_every": (int,),
    "save_every": (int,),
    "seed": (int,),
    "hf_base": (str,),
}
_POSITIVE = ("max_examples", "val_examples", "few_shot", "rank", "alpha", "learning_rate", "epochs", "max_steps",
             "max_seq_len", "batch_tokens", "eval_every", "save_every")


def _check(table: Mapping[str, Any], types: Mapping[str, tuple], what: str) -> None:
    for key, value in table.items():
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(types))})"
            raise ValueError(f"{what}unknown key '{key}'{hint}")
        if isinstance(value, bool) or not isinstance(value, types[key]):
            raise ValueError(f"{what}'{key}' has the wrong type ({type(value).__name__})")


def parse_source(table: Any, index: int) -> DataSource:
    what = f"data[{index}]: "
    if not isinstance(table, dict):
        raise ValueError(f"{what}each data entry must be a table like {{ file = ..., target = ... }}")
    _check(table, _SOURCE_TYPES, what)
    for key in ("file", "target"):
        if key not in table:
            raise ValueError(f"{what}missing key '{key}'")
    field_map = table.get("fields", {"input": "question"})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in field_map.items()):
        raise ValueError(f"{what}'fields' maps template fields to row fields, both strings")
    if "weight" in table and table["weight"] <= 0:
        raise ValueError(f"{what}'weight' must be > 0")
    if "max_examples" in table and table["max_examples"] <= 0:
        raise ValueError(f"{what}'max_examples' must be > 0")
    return DataSource(
        file=table["file"],
        target=table["target"],
        fields=tuple(field_map.items()),
        weight=float(table.get("weight", 1.0)),
        max_examples=table.get("max_examples"),
    )


def parse_recipe(table: Mapping[str, Any]) -> TrainRecipe:
    """Validate a ``[stage.train]`` table; raises ValueError with the key."""
    _check(table, _RECIPE_TYPES, "")
    if not table.get("data"):
        raise ValueError("missing 'data': a list of { file = ..., target = ..., fields = {...} } tables")
    for key in _POSITIVE:
        if key in table and table[key] <= 0:
            raise ValueError(f"'{key}' must be > 0")
    if not 0 <= table.get("val_fraction", 0.05) < 1:
        raise ValueError("'val_fraction' must be in [0, 1)")
    if not 0 <= table.get("dropout", 0.05) < 1:
        raise ValueError("'dropout' must be in [0, 1)")
    modules = table.get("target_modules", TrainRecipe.target_modules)
    if not modules or not all(isinstance(m, str) for m in modules):
        raise ValueError("'target_modules' must be a non-empty list of module names")
    values = {f.name: table[f.name] for f in fields(TrainRecipe) if f.name in table}
    values["data"] = tuple(parse_source(t, i) for i, t in enumerate(table["data"]))
    values["target_modules"] = tuple(modules)
    for key in ("val_fraction", "alpha", "dropout", "learning_rate", "epochs"):
        if key in values:
            values[key] = float(values[key])
    return TrainRecipe(**values)
