"""How a dataset row becomes a stack's ``{input}``: one definition shared by
evaluation (what a stack is asked) and training (what its stages learn from).

Multiple-choice rows are shown as the question followed by lettered options;
derived row fields make this available to training recipes:

- ``question_with_choices``: the question and its lettered options, exactly
  the ``{input}`` evaluation gives a stack for a multiple-choice question;
- ``answer_text``: the text of the correct choice;
- ``answer_letter``: its letter.

Yes/no rows (StrategyQA: ``answer`` is ``"yes"`` or ``"no"``, no ``choices``)
are multiple choice over :data:`YES_NO`, for evaluation and training alike.
"""

from __future__ import annotations

import string

LETTERS = string.ascii_uppercase
MAX_CHOICES = len(LETTERS)  # options are lettered A-Z
YES_NO = ("yes", "no")


def check_letterable(choices: list) -> None:
    """ValueError unless every choice can get a letter."""
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"{len(choices)} choices, but options are lettered A-Z (at most {MAX_CHOICES}); "
                         "split the question or drop choices")


def as_multiple_choice(row: dict) -> tuple[list, object]:
    """``(choices, answer)`` of a row; a yes/no row becomes choices YES_NO."""
    choices, answer = row.get("choices"), row.get("answer")
    if choices is None and isinstance(answer, str) and answer.strip().lower() in YES_NO:
        return list(YES_NO), YES_NO.index(answer.strip().lower())
    return choices, answer


def continuation(prompt: str, text: str) -> str:
    """``text`` as it follows ``prompt``, for training targets and scored
    choices alike: with a leading space after a prompt that ends mid-line
    (``"Answer:"`` + ``" Paris"``, as lm-evaluation-harness writes choices),
    without one after a newline (a chat turn's header)."""
    text = text.strip()
    return f" {text}" if prompt and not prompt[-1].isspace() else text


def lettered_options(choices: list[str]) -> str:
    check_letterable(choices)
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def mc_input(question: str, choices: list[str], passage: str | None = None) -> str:
    """The stack input for a multiple-choice question (with an optional passage)."""
    parts = [passage] if passage else []
    parts.append(question)
    if choices:
        parts.append(lettered_options(choices))
    return "\n".join(parts)


def derived_field(row: dict, key: str) -> str | None:
    """A derived field of a multiple-choice row, or None if ``key`` is not one
    (ValueError if the row has more choices than letters)."""
    if key not in ("question_with_choices", "answer_text", "answer_letter"):
        return None
    choices, answer = as_multiple_choice(row)
    if not isinstance(choices, list) or not isinstance(answer, int) or isinstance(answer, bool):
        return None
    if not 0 <= answer < len(choices):
        return None
    if key != "answer_text":
        check_letterable(choices)
    if key == "question_with_choices" and isinstance(row.get("question"), str):
        return mc_input(row["question"], [str(c) for c in choices])
    if key == "answer_text":
        return str(choices[answer])
    if key == "answer_letter":
        return LETTERS[answer]
    return None
