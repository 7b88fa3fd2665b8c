"""Evaluation data: JSONL rows -> frozen examples, with file:line errors.

Multiple choice rows: ``question``, ``choices`` (list of strings), ``answer``
(index; ``"yes"``/``"no"`` for StrategyQA-style rows, which become the choices
``["yes", "no"]``), optional ``context``, ``subject``. Generative rows:
``question``, ``answer`` (string or number). ``.jsonl`` or ``.jsonl.gz``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from ..fileio import BadLine, read_jsonl
from ..formats import as_multiple_choice, check_letterable

SPLIT_FALLBACK = ("test", "dev", "validation")


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: int | str  # index for multiple choice, text for generative
    choices: tuple[str, ...] = ()
    context: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


BadRow = BadLine  # a skipped row: path, line, reason


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
    check_letterable(choices)
    extra = {k: row[k] for k in ("subject",) if isinstance(row.get(k), str)}
    return Example(str(row.get("id", f"{stem}_{number}")), question, answer, tuple(choices),
                   _text(row, "context", required=False), extra)


def parse_gen(row: dict, number: int, stem: str) -> Example:
    question = _text(row, "question")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise ValueError("missing field 'answer' (the final short answer)" if answer is None
                         else f"field 'answer' must be a string or a number, got {type(answer).__name__}")
    return Example(str(row.get("id", f"{stem}_{number}")), question, str(answer).strip())


def read_examples(path: Path, kind: str, skip_bad: bool = False, bad: list[BadRow] | None = None
                  ) -> list[Example]:
    """All examples of a JSONL file; a bad row is a DatasetError (file:line)
    unless ``skip_bad``, then it is appended to ``bad`` and skipped. A file
    with no usable row is a DatasetError either way (a score over nothing
    would look like a result)."""
    path = Path(path)
    parse = parse_mc if kind == "mc" else parse_gen
    stem = path.name.split(".")[0]
    fix = "fix or delete the row (use --skip-bad to skip bad rows)"
    bad = [] if bad is None else bad
    examples = []
    for number, row in read_jsonl(path, skip_bad=skip_bad, bad=bad, fix=fix):
        try:
            examples.append(parse(row, number, stem))
        except ValueError as exc:
            problem = BadRow(str(path), number, str(exc))
            if not skip_bad:
                raise DatasetError(f"{problem}; {fix}") from None
            bad.append(problem)
    if not examples:
        what = f"all {len(bad)} rows are bad" if bad else "it has no rows"
        raise DatasetError(f"{path}: no examples to evaluate ({what}); give a JSONL file with one JSON object "
                           "per line")
    return examples


def guess_kind(path: Path) -> str:
    """``"mc"`` or ``"gen"`` from the first usable row (``--data`` without
    ``--format``). A file's problems are left for :func:`read_examples` to
    report; a pipe or device is refused rather than read (it could block)."""
    try:
        for _, row in read_jsonl(Path(path), skip_bad=True):
            return "mc" if "choices" in row or "facts" in row else "gen"
    except DatasetError:
        pass
    return "gen"


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

