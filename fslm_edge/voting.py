"""Self-consistency (Wang et al. 2022): several sampled chains, the most common
final answer wins. Answers are compared after light normalization so that
"1,200", "1200." and " 1200" count as one. Or the most likely chain wins
(``select = "likelihood"``)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence


def normalize_answer(text: str) -> str:
    """Case, outer whitespace and punctuation, inner runs of spaces and digit-group
    commas do not tell two answers apart."""
    text = " ".join(text.split()).casefold().strip(" .!?\"'")
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def majority(answers: Sequence[str]) -> int:
    """Index of the winning answer: the most common normalized non-empty one,
    ties to the earliest; 0 if every answer is empty."""
    keys = [normalize_answer(a) for a in answers]
    counts = Counter(k for k in keys if k)
    if not counts:
        return 0
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if k and counts[k] == best)


def most_likely(logprobs: Sequence[float]) -> int:
    """Index of the highest log-probability, ties to the earliest."""
    return max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
