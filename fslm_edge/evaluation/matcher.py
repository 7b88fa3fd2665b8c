"""The strict answer matcher of generate mode: which option a free-text
answer names, and why (docs/eval.md, "Generate mode").

An answer is right only if it names exactly one option and that option is the
gold one. After stripping spaces, markdown/quote marks and a leading "Answer:"
/ "The answer is" / "The correct answer is" / "Option", an answer names
option k if

(a) it is option k's capital letter alone (``B``, ``B.``, ``(B)``, ``Answer:
    B``), or starts with it followed by ``.`` ``)`` ``:`` ``,`` or a line break
    (``B) carbon dioxide``); the text after the letter is read by (c) as well,
    and an option named there besides k makes the answer name two;
(b) its normalized text equals option k's normalized text; or
(c) it contains option k's text as a whole-word phrase. An occurrence of an
    option's text inside an occurrence of a longer option's text does not
    count (options "red" and "red and blue": "red and blue" names only the
    longer one).

Letters count only as above: a capital inside a word ("Apple"), a lowercase
"a" (an article) or a capital followed by a plain space ("A dog") is no
letter. Naming two options ("A or B", both options' texts), none, or a letter
past the last option is wrong. Yes/no questions: the first "yes" or "no" word
decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .extract import normalize_text

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Bump when a rule changes: cached generate-mode texts are then matched again (not generated again).
MATCHER_VERSION = 2

_EDGE = " \t\r\n*_`\"'“”‘’"
_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:correct\s+|right\s+|best\s+|final\s+)?answer(?:\s+is)?|"
                     r"(?:the\s+)?(?:correct\s+)?(?:option|choice)(?:\s+is)?)\b\s*[:\-]?\s*", re.IGNORECASE)
# One capital letter, maybe in parentheses, then a delimiter (or nothing).
_LETTER = re.compile(r"^[(\[]?([A-Z])(?:[)\]]|[.):,]|(?=\n)|$)")
# Several letters joined: "A or B", "A and C", "A, B", "A/B".
_LETTERS = re.compile(r"^[(\[]?[A-Z][)\].]?(?:\s*(?:,|/|\bor\b|\band\b|&)\s*[(\[]?[A-Z][)\].]?)+\s*[.!]?$")


@dataclass(frozen=True)
class Match:
    """What an answer names: the option indices, the prediction (the one
    option, or None) and the rule that decided."""

    named: tuple[int, ...]
    reason: str

    @property
    def pred(self) -> int | None:
        return self.named[0] if len(self.named) == 1 else None

    def to_dict(self) -> dict:
        return {"pred": self.pred, "named": list(self.named), "match": self.reason}


def is_yes_no(choices) -> bool:
    return sorted(c.strip().lower() for c in choices) == ["no", "yes"]


def match_answer(answer: str, choices) -> Match:
    """The options ``answer`` names (yes/no questions: the first yes/no word)."""
    choices = list(choices)
    if is_yes_no(choices):
        return match_yes_no(answer, choices)
    return match_option(answer, choices)


def match_yes_no(answer: str, choices: list[str]) -> Match:
    found = re.search(r"\b(yes|no)\b", answer.lower())
    if found is None:
        return Match((), "no yes/no word")
    index = [c.strip().lower() for c in choices].index(found.group(1))
    return Match((index,), f"first yes/no word: {found.group(1)}")


def strip_answer(answer: str) -> str:
    """The answer without surrounding spaces and quote/markdown marks, and
    without a leading "Answer:" / "The answer is" (repeatedly) that something
    follows: an answer that is only such words stays (an option may be
    "answer")."""
    text = answer.strip(_EDGE)
    while True:
        cut = _PREFIX.sub("", text, count=1).strip(_EDGE)
        if cut == text or not cut.strip(".,;:!?-"):
            return text
        text = cut


def match_option(answer: str, choices: list[str]) -> Match:
    text = strip_answer(answer)
    if not text:
        return Match((), "empty answer")
    if _LETTERS.match(text):
        letters = sorted({LETTERS.index(c) for c in re.findall(r"(?<![A-Za-z])[A-Z](?![A-Za-z])", text)})
        return Match(tuple(letters), "several letters")
    letter = _LETTER.match(text)
    if letter is not None:
        k = LETTERS.index(letter.group(1))
        if k >= len(choices):
            return Match((), f"letter {letter.group(1)} is not an option")
        rest = normalize_text(text[letter.end():])
        own = normalize_text(choices[k])
        if not rest or _starts_with_words(rest, own):
            return Match((k,), "letter" if not rest else "letter and its option's text")
        others = _contained(rest, choices)
        named = tuple(sorted({k, *others}))
        return Match(named, "letter" if named == (k,) else "letter and another option's text")
    normalized = normalize_text(text)
    exact = [k for k, choice in enumerate(choices) if normalize_text(choice) and normalized == normalize_text(choice)]
    if len(exact) == 1:
        return Match((exact[0],), "option text")
    named = tuple(exact) or _contained(normalized, choices)
    if not named:
        return Match((), "names no option")
    return Match(named, "contains its option's text" if len(named) == 1 else "contains several options' texts")


def _starts_with_words(text: str, prefix: str) -> bool:
    return bool(prefix) and (text == prefix or text.startswith(prefix + " "))


def _spans(text: str, phrase: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)]


def _contained(normalized: str, choices: list[str]) -> tuple[int, ...]:
    """Options whose normalized text occurs in ``normalized`` as whole words,
    not counting occurrences inside an occurrence of a longer option."""
    phrases = {k: normalize_text(choice) for k, choice in enumerate(choices)}
    spans = {k: _spans(normalized, phrase) for k, phrase in phrases.items() if phrase}
    named = []
    for k, own in spans.items():
        longer = [span for j, other in spans.items() if len(phrases[j]) > len(phrases[k]) for span in other]
        if any(not any(a <= s and e <= b for a, b in longer) for s, e in own):
            named.append(k)
    return tuple(named)
