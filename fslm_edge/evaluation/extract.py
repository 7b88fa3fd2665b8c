"""Answer extraction for generative tasks, and exact match."""

from __future__ import annotations

import re
import string

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"(?:answer is|####|answer:)\s*:?\s*(-?\$?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5', '$18' -> '18', '7.' -> '7'; None if not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return repr(value)


def extract_number(text: str) -> str | None:
    """The final answer number: after 'The answer is' / '####' if present, else
    the last number in the text."""
    marked = _ANSWER_IS.findall(text)
    if marked:
        return normalize_number(marked[-1])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def extract_answer(text: str, gold: str) -> str | None:
    """The prediction in the gold answer's shape: a number, yes/no, or the
    first line of text."""
    if normalize_number(gold) is not None:
        return extract_number(text)
    if normalize_text(gold) in ("yes", "no"):
        found = re.findall(r"\b(yes|no)\b", text.lower())
        return found[0] if found else None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return normalize_text(lines[0]) if lines else None


def is_correct(prediction: str | None, gold: str) -> bool:
    if prediction is None:
        return False
    number = normalize_number(gold)
    if number is not None:
        return prediction == number
    return prediction == normalize_text(gold)
