"""Lettered options in a question, as a person types a multiple-choice one:

    Which gas do plants absorb from the air?
    A. oxygen
    B. carbon dioxide
    C. nitrogen
    Answer with the letter of the correct option.

``split_options`` finds the option lines (consecutive ``A.``/``A)`` lines,
letters in order from A, at least two) and gives the question without them,
the options' texts, and the lines after them. A question without lettered
options that asks for a yes or no ("... Answer yes or no.") has the options
"yes" and "no", and its question is the text without that request. Stage templates see these as
``{question}`` and ``{options}``; ``choices_from_input = true`` constrains a
stage's text to one option's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPTION = re.compile(r"^\s*\(?([A-Z])[.):]\s+(\S.*?)\s*$")
# "Answer yes or no.", "Reply with yes or no", "Please respond: yes or no" at the end of the text
_YES_NO = re.compile(r"\s*(?:please\s+)?(?:answer|reply|respond)(?:\s+(?:with|only))?\s*:?\s*"
                     r"[\"']?yes[\"']?\s+or\s+[\"']?no[\"']?\s*[.!]*\s*$", re.I)


@dataclass(frozen=True)
class OptionsSplit:
    question: str  # the text before the options (the whole input when it lists none)
    options: tuple[str, ...]  # each option's text, in letter order
    option_lines: str  # the option lines as typed ("" when none)
    after: str  # lines after the options (an instruction), "" when none


def split_options(text: str) -> OptionsSplit:
    lines = text.splitlines()
    for start in range(len(lines)):
        run = _option_run(lines, start)
        if len(run) >= 2:
            end = start + len(run)
            return OptionsSplit("\n".join(lines[:start]).strip() or text.strip(), tuple(run),
                                "\n".join(line.strip() for line in lines[start:end]),
                                "\n".join(lines[end:]).strip())
    yes_no = _YES_NO.search(text)
    if yes_no and yes_no.start() > 0:
        return OptionsSplit(text[: yes_no.start()].strip(), ("yes", "no"), "", yes_no.group(0).strip())
    return OptionsSplit(text.strip(), (), "", "")


def _option_run(lines: list[str], start: int) -> list[str]:
    run: list[str] = []
    for line in lines[start:]:
        found = _OPTION.match(line)
        if not found or found.group(1) != chr(ord("A") + len(run)):
            break
        run.append(found.group(2))
    return run


def input_values(text: str) -> dict[str, str]:
    """The template fields every stage may use besides earlier stages' texts."""
    split = split_options(text)
    return {"input": text, "question": split.question, "options": split.option_lines}
