"""Named evaluation tasks: prompt formats, scoring mode, answer extraction.

Single-model multiple choice follows the zero-shot lighteval / lm-eval
formulations (no chat template): e.g. ARC is ``"Question: {q}\\nAnswer:"``
with each choice scored as the continuation ``" {choice}"``. With
``lettered`` the choices are listed as ``A. ...`` lines and the letters
``" A"``, ``" B"``... are scored instead.

In generate mode (``--mode generate``) every target runs as ``fslm-edge run``
runs it, on the question typed as a person would (``generate_input``), and
the printed answer is matched to an option (``matcher``).

Through a stack, the stack's ``{input}`` is the question followed by the
lettered choices (so upstream stages can see them) and each choice's text is
scored as the continuation of the final stage's prompt (or its letter, with
``lettered``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InputError
from .data import Example

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_INSTRUCTION = "Answer with the letter of the correct option."
YES_NO_INSTRUCTION = "Answer yes or no."
Request = tuple[str, str]  # (context, continuation) for one choice


def lettered_options(example: Example) -> str:
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(example.choices))


def _qa(example: Example) -> str:
    return f"Question: {example.question}\nAnswer:"


def _plain(example: Example) -> str:
    return example.question


def _hellaswag(example: Example) -> str:
    return _preprocess(example.question)


def _preprocess(text: str) -> str:
    """HellaSwag's WikiHow artefacts, cleaned as lm-eval does."""
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def _truthfulqa(example: Example) -> str:
    return f"Q: {example.question}\nA:"


def _boolq(example: Example) -> str:
    question = example.question.strip().rstrip("?")
    return f"{example.context}\nQuestion: {question}?\nAnswer:"


def _mmlu(example: Example) -> str:
    subject = example.extra.get("subject", "general knowledge").replace("_", " ")
    return f"The following are questions about {subject}.\nQuestion: {example.question}\nAnswer:"


def _with_context(example: Example) -> str:
    prefix = f"{example.context}\n" if example.context else ""
    return f"{prefix}Question: {example.question}\nAnswer:"


def winogrande_requests(example: Example) -> list[Request]:
    """Partial scoring: each option fills the blank; score the rest of the sentence."""
    sentence = example.question
    if sentence.count("_") != 1:
        raise InputError(f"winogrande example {example.id}: the sentence needs exactly one '_' blank")
    cut = sentence.index("_")
    rest = " " + sentence[cut + 1:].strip()
    return [(sentence[:cut] + option, rest) for option in example.choices]


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "mc" or "gen"
    metric: str  # the headline metric: "acc", "acc_norm" or "exact_match"
    prompt: Callable[[Example], str] = _qa
    custom_requests: Callable[[Example], list[Request]] | None = None
    description: str = ""
    # Whether a row's ``context`` is a passage the question needs (BoolQ, user data). In the shared
    # files it is otherwise a gold explanation (CommonsenseQA's CoS-E, e-SNLI) and must not be shown.
    uses_context: bool = False

    def requests(self, example: Example, lettered: bool = False) -> list[Request]:
        """Single model: one (context, continuation) per choice."""
        if lettered:
            context = f"{self.prompt(example).removesuffix('Answer:').rstrip()}\n{lettered_options(example)}\nAnswer:"
            return [(context, f" {LETTERS[i]}") for i in range(len(example.choices))]
        if self.custom_requests is not None:
            return self.custom_requests(example)
        context = self.prompt(example)
        clean = _preprocess if self.name == "hellaswag" else str
        return [(context, f" {clean(choice)}") for choice in example.choices]

    def stack_input(self, example: Example, show_choices: bool = True) -> str:
        """The stack's ``{input}``: context, question and (for MC, unless the
        stack sets ``show_choices = false``) lettered choices, as
        ``fslm_edge.formats.mc_input`` defines it for training too."""
        from ..formats import mc_input

        passage = example.context if example.context and self.uses_context else None
        if self.kind == "mc":
            return mc_input(example.question, list(example.choices) if show_choices else [], passage)
        return f"{passage}\n{example.question}" if passage else example.question

    def stack_continuations(self, example: Example, lettered: bool = False) -> list[str]:
        if lettered:
            return [LETTERS[i] for i in range(len(example.choices))]
        return [choice.strip() for choice in example.choices]

    def generate_input(self, example: Example) -> str:
        """Generate mode's question, the same for every target: a multiple-choice
        question with its options as lettered lines and a one-line instruction
        (what ``fslm_edge.options.split_options`` reads back), a yes/no one with
        "Answer yes or no.", a passage first where the task has one."""
        from ..formats import mc_input
        from .matcher import is_yes_no

        passage = example.context if example.context and self.uses_context else None
        if self.kind != "mc":
            return self.stack_input(example)
        if is_yes_no(example.choices):
            return "\n".join([*([passage] if passage else []), example.question, YES_NO_INSTRUCTION])
        return f"{mc_input(example.question, list(example.choices), passage)}\n{LETTER_INSTRUCTION}"

    def gen_prompt_parts(self, example: Example) -> tuple[tuple[str, bool], ...]:
        """``gen_prompt`` as prompt parts: the task's own text trusted, the
        question and passage untrusted (never parsed for special tokens)."""
        slots = {"\ue000q\ue001": example.question, "\ue000c\ue001": example.context}
        marked = Example(example.id, "\ue000q\ue001", example.answer, example.choices,
                         "\ue000c\ue001" if example.context else "", example.extra)
        text = self.gen_prompt(marked)
        parts: list[tuple[str, bool]] = []
        for piece in re.split("(\ue000[qc]\ue001)", text):
            if piece in slots:
                parts.append((slots[piece], False))
            elif piece:
                parts.append((piece, True))
        if "".join(p for p, _ in parts) != self.gen_prompt(example):  # a format that rewrites the question
            return ((self.gen_prompt(example), False),)
        return tuple(parts)

    def gen_prompt(self, example: Example) -> str:
        return (f"{example.question}\nSolve the problem step by step. End with: The answer is "
                "(the number).") if self.name == "gsm8k" else self.prompt(example)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("arc_easy", "mc", "acc_norm", _qa, description="ARC-Easy science questions"),
    Task("arc_challenge", "mc", "acc_norm", _qa, description="ARC-Challenge science questions"),
    Task("openbookqa", "mc", "acc_norm", _plain, description="OpenBookQA (question stem continued)"),
    Task("commonsenseqa", "mc", "acc_norm", _qa, description="CommonsenseQA, 5 choices"),
    Task("strategyqa", "mc", "acc", _qa, description="StrategyQA as 2-choice yes/no"),
    Task("gsm8k", "gen", "exact_match", description="grade-school math, final number exact match"),
    Task("hellaswag", "mc", "acc_norm", _hellaswag, description="HellaSwag endings"),
    Task("piqa", "mc", "acc_norm", _qa, description="PIQA physical commonsense"),
    Task("winogrande", "mc", "acc", _plain, winogrande_requests, description="WinoGrande, partial scoring"),
    Task("truthfulqa_mc1", "mc", "acc", _truthfulqa, description="TruthfulQA MC1 (zero-shot, no primer)"),
    Task("boolq", "mc", "acc", _boolq, description="BoolQ: passage + yes/no question", uses_context=True),
    Task("mmlu", "mc", "acc", _mmlu, description="MMLU, cloze over the answers"),
)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}") from None


def custom_task(name: str, kind: str) -> Task:
    """A task for ``--data FILE --format mc|gen`` without a named format."""
    if kind == "mc":
        return Task(name, "mc", "acc_norm", _with_context, description="custom multiple choice",
                    uses_context=True)
    return Task(name, "gen", "exact_match", _with_context, description="custom generative", uses_context=True)
