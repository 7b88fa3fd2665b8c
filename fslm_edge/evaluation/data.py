"""Evaluation data: JSONL rows -> frozen examples, with file:line errors.

Multiple choice rows: ``question``, ``choices`` (list of strings), ``answer``
(index; ``"yes"``/``"no"`` for StrategyQA-style rows, which become the choices
``["yes", "no"]``), optional ``context``, ``subject``. Generative rows:
``question``, ``answer`` (string or number). ``.jsonl`` or ``.jsonl.gz``.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from ..formats import as_multiple_choice

SPLIT_FALLBACK = ("test", "dev", "validation")


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: int | str  # index for multiple choice, text for generative
    choices: tuple[str, ...] = ()
    context: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class BadRow:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def _open(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"field '{key}' must be a non-empty string")
    return value


def parse_mc(row: dict, number: int, stem: str) -> Example:
    question = _text(row, "question")
    choices, answer = as_multiple_choice(row)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("field 'choices' must be a list of at least two non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise ValueError("missing field 'answer' (an integer index into choices)" if answer is None
                         else f"'answer' must be an integer index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer index {answer} out of range for {len(choices)} choices")
    extra = {k: row[k] for k in ("subject",) if isinstance(row.get(k), str)}
    return Example(str(row.get("id", f"{stem}_{number}")), question, answer, tuple(choices),
                   _text(row, "context", required=False), extra)


def parse_gen(row: dict, number: int, stem: str) -> Example:
    question = _text(row, "question")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise ValueError("missing field 'answer' (the final short answer)")
    return Example(str(row.get("id", f"{stem}_{number}")), question, str(answer).strip())


def read_examples(path: Path, kind: str, skip_bad: bool = False, bad: list[BadRow] | None = None
                  ) -> list[Example]:
    """All examples of a JSONL file; a bad row is a DatasetError (file:line)
    unless ``skip_bad``, then it is appended to ``bad`` and skipped."""
    parse = parse_mc if kind == "mc" else parse_gen
    stem = path.name.split(".")[0]
    examples = []
    try:
        handle = _open(path)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a row must be a JSON object")
                examples.append(parse(row, number, stem))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                reason = f"not JSON ({exc.msg})" if isinstance(exc, json.JSONDecodeError) else str(exc)
                problem = BadRow(str(path), number, reason)
                if not skip_bad:
                    raise DatasetError(f"{problem} (use --skip-bad to skip bad rows)") from None
                if bad is not None:
                    bad.append(problem)
    return examples


def find_task_file(data_dir: Path, stem: str, split: str) -> Path:
    """``<stem>_<split>.jsonl[.gz]`` in ``data_dir``, falling back test -> dev ->
    validation from the requested split."""
    order = [split] + [s for s in SPLIT_FALLBACK[SPLIT_FALLBACK.index(split) + 1:]] if split in SPLIT_FALLBACK \
        else [split]
    for candidate in order:
        for suffix in (".jsonl", ".jsonl.gz"):
            path = data_dir / f"{stem}_{candidate}{suffix}"
            if path.is_file():
                return path
    tried = ", ".join(f"{stem}_{s}.jsonl" for s in order)
    raise DatasetError(f"no data for task '{stem}' in {data_dir} (looked for {tried})")


def select(examples: list[Example], limit: int | None, seed: int | None) -> list[Example]:
    """The first ``limit`` examples, or with ``seed`` a seeded random sample
    (kept in file order)."""
    if limit is None or limit >= len(examples):
        return examples
    if seed is None:
        return examples[:limit]
    picked = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in picked]

