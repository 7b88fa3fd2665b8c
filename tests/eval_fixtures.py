"""Tiny hand-written evaluation data (our own text, not dataset copies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MC_ROWS = [
    {"id": "t1", "question": "What color is the sky on a clear day?", "choices": ["blue", "green", "purple", "brown"],
     "answer": 0},
    {"id": "t2", "question": "How many legs does a cat have?", "choices": ["two", "four", "six", "ten"], "answer": 1},
    {"id": "t3", "question": "What do bees make?", "choices": ["steel", "glass", "honey", "paper"], "answer": 2},
    {"id": "t4", "question": "Which animal barks?", "choices": ["a fish", "a snail", "a worm", "a dog"], "answer": 3},
]
GEN_ROWS = [
    {"id": "g1", "question": "Tom has 2 apples and buys 3 more. How many apples does he have?", "answer": "5",
     "rationale": "2 + 3 = 5"},
]
YESNO_ROWS = [
    {"id": "y1", "question": "Is water wet?", "answer": "yes", "decomposition": [], "facts": []},
    {"id": "y2", "question": "Can a rock fly by itself?", "answer": "no", "decomposition": [], "facts": []},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def smol_model():
    from fslm_edge.engine import LoadedModel
    from fslm_edge.models import resolve_model

    model = LoadedModel(resolve_model("smollm2-135m-instruct"), 1024, 1, 512)
    yield model
    model.close()
