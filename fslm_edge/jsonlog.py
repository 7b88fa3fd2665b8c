"""Append-only JSONL record logs that survive interruption (the evaluation
cache, the build's upstream-output cache). The implementation lives in
:mod:`fslm_edge.fileio`; this name stays for the modules that import it."""

from __future__ import annotations

from .fileio import append_record, read_records

__all__ = ["append_record", "read_records"]
