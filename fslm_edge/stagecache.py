"""Cached outputs of a stack's leading stages, run at temperature 0.

Keyed by those stages' settings, their adapters' hashes and the stack input,
so the same text is never generated twice. Shared by training (a later
stage's ``"@model"`` fields, ``convert/upstream.py``) and evaluation (a stack
variant that changes only its last stage reuses the earlier stages' texts).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .calculator import VERSION as CALCULATOR_VERSION
from .config import StageConfig
from .fileio import append_record, fingerprint, read_records, sha256_file


def stages_fingerprint(context_size: int, stages: Sequence[StageConfig], extra: str = "") -> str:
    """Everything that decides what ``stages`` say for a given input."""
    parts = []
    for s in stages:
        adapter = sha256_file(s.adapter) if s.adapter is not None else None
        part = [s.name, s.template, s.model, s.system, s.chat, repr(s.sampling), adapter, s.adapter_scale]
        # (caches made before these keys existed stay valid: calculator off, BOS dropped)
        part += [f"calculator-{CALCULATOR_VERSION}"] if s.calculator else []
        parts.append(part if s.drop_bos else part + ["keeps-bos"])
    text = json.dumps([context_size, parts])
    return f"{text}\n{extra}" if extra else text


class StageOutputCache:
    """Append-only JSONL of ``{"key": ..., **value}`` records, one per input."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self._fingerprint = fingerprint
        self._records = {r.pop("key"): r for r in read_records(self.path) if "key" in r}

    def key(self, stack_input: str) -> str:
        return fingerprint(self._fingerprint, stack_input)

    def get(self, stack_input: str) -> dict | None:
        return self._records.get(self.key(stack_input))

    def put(self, stack_input: str, value: dict) -> None:
        key = self.key(stack_input)
        append_record(self.path, {"key": key, **value})
        self._records[key] = value


class GenerationMemo:
    """Texts a stage generated greedily, keyed by everything that decides them
    (the model and adapter files, the prompt's token ids, the generation
    settings): at temperature 0 the same key gives the same text, so a stack
    run again (an evaluation of a variant that changes only a later stage)
    generates nothing twice. Append-only JSONL (``path`` None: in memory only,
    for one run); safe across threads."""

    def __init__(self, path: Path | None):
        import threading

        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        records = read_records(self.path) if self.path is not None else []
        self._records = {r.pop("key"): r for r in records if "key" in r}

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._records.get(key)

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            if self.path is not None:
                append_record(self.path, {"key": key, **value})
            self._records[key] = value
