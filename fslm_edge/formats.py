"""How a dataset row becomes a stack's ``{input}``: one definition shared by
evaluation (what a stack is asked) and training (what its stages learn from).

Multiple-choice rows are shown as the question followed by lettered options;
derived row fields make this available to training recipes:

- ``question_with_choices``: the question and its lettered options, exactly
  the ``{input}`` evaluation gives a stack for a multiple-choice question;
- ``answer_text``: the text of the correct choice;
- ``answer_letter``: its letter.
"""

from __future__ import annotations

import string

LETTERS = string.ascii_uppercase


def lettered_options(choices: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def mc_input(question: str, choices: list[str], passage: str | None = None) -> str:
    """The stack input for a multiple-choice question (with an optional passage)."""
    parts = [passage] if passage else []
    parts.append(question)
    parts.append(lettered_options(choices))
    return "\n".join(parts)


def derived_field(row: dict, key: str) -> str | None:
    """A derived field of a multiple-choice row, or None if ``key`` is not one."""
    choices, answer = row.get("choices"), row.get("answer")
    if not isinstance(choices, list) or not isinstance(answer, int) or isinstance(answer, bool):
        return None
    if not 0 <= answer < len(choices):
        return None
    if key == "question_with_choices" and isinstance(row.get("question"), str):
        return mc_input(row["question"], [str(c) for c in choices])
    if key == "answer_text":
        return str(choices[answer])
    if key == "answer_letter":
        return LETTERS[answer]
    return None
