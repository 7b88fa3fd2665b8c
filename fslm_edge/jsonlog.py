"""Append-only JSONL files that survive interruption: each record is one
line written and fsync'd at once; a line cut short by a crash is skipped on
reading. Used by the evaluation cache and the build's upstream-output cache."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    """Every complete JSON line of ``path`` (none if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption
    return records


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` as one line and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
