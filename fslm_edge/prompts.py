"""The one place a stage's prompt string is made, for serving and training.

``stage_prompt`` renders the stage template with the input and upstream
texts, then (if ``chat = true``) wraps it in the model's own chat template
read from the GGUF (``tokenizer.chat_template``).

A template that starts with the BOS text (``<|im_start|>`` for SmolLM2) keeps
it unless the tokenizer adds BOS itself, as llama.cpp's server does. Stages
with ``drop_bos = true`` drop it regardless: the format the shipped adapters
were trained on, before this was fixed (SmolLM2's tokenizer adds no BOS, so
their prompts begin with ``system``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .chat_template import render_chat_template
from .config import StageConfig
from .templates import render_template, render_template_parts

# Stands in for the user's text while the chat template renders, so that the
# rendered text can be split into the template's own (trusted) text and the
# user's (untrusted) text. Private-use code points: no template writes them.
_USER_SLOT = "\ue000fslm-edge-user-text\ue001"


@dataclass(frozen=True)
class Prompt:
    """A prompt as ``(text, trusted)`` parts. Only trusted text (the stage
    template and the chat template) may contain special tokens; the question and
    every stage's output are tokenized as plain text (engine ``tokenize_prompt``)."""

    parts: tuple[tuple[str, bool], ...]

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)

    def __str__(self) -> str:
        return self.text

    def plus(self, text: str, trusted: bool = False) -> Prompt:
        """This prompt followed by ``text`` (untrusted unless said otherwise)."""
        return Prompt(self.parts + ((text, trusted),))

    @classmethod
    def trusted(cls, text: str) -> Prompt:
        return cls(((text, True),))

    @classmethod
    def untrusted(cls, text: str) -> Prompt:
        return cls(((text, False),))


def _joined(parts) -> tuple[tuple[str, bool], ...]:
    """Adjacent parts of the same trust merged, empty ones dropped."""
    out: list[tuple[str, bool]] = []
    for text, trusted in parts:
        if not text:
            continue
        if out and out[-1][1] == trusted:
            out[-1] = (out[-1][0] + text, trusted)
        else:
            out.append((text, trusted))
    return tuple(out)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's Jinja chat template, rendered in a sandbox."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    tokenizer_adds_bos: bool = True

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat_template(self.source, messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                    add_generation_prompt=add_generation_prompt)

    def prompt(self, messages: list[dict[str, str]], drop_bos: bool = False) -> str:
        """The rendered conversation up to the assistant's turn, as text for a
        tokenizer that parses special tokens: without its leading BOS text
        when the tokenizer adds BOS itself (or ``drop_bos``)."""
        text = self.render(messages)
        if self.bos_token and text.startswith(self.bos_token) and (self.tokenizer_adds_bos or drop_bos):
            return text[len(self.bos_token):]
        return text

    def user_turn(self, system: str | None, user: tuple[tuple[str, bool], ...], drop_bos: bool = False) -> Prompt:
        """A one-turn conversation (optional system text) up to the assistant's
        turn, the user's parts keeping their trust: the template renders around
        a placeholder, which is then replaced by the user's parts."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": _USER_SLOT})
        rendered = self.prompt(messages, drop_bos)
        if rendered.count(_USER_SLOT) != 1:
            from .errors import ModelError

            raise ModelError("the model's chat template does not insert the user's text exactly once as given; "
                             "set chat = false for this stage")
        before, after = rendered.split(_USER_SLOT)
        return Prompt(_joined(((before, True), *user, (after, True))))


def stage_user_text(stage: StageConfig, values: Mapping[str, str]) -> str:
    """The stage template filled with ``{input}`` and upstream stage texts."""
    return render_template(stage.template, values)


def stage_prompt(stage: StageConfig, values: Mapping[str, str], chat: ChatTemplate | None) -> Prompt:
    """The full prompt sent to the model for ``stage``, its parts marked
    trusted (stack file, chat template) or not (question, stage outputs).

    Without a chat template (or with ``chat = false``) the system prompt, if
    any, is put before the user text, separated by a blank line.
    """
    user = _joined(render_template_parts(stage.template, values))
    if stage.chat and chat is not None:
        return chat.user_turn(stage.system, user, stage.drop_bos)
    if stage.system:
        return Prompt(_joined(((f"{stage.system}\n\n", True), *user)))
    return Prompt(user)
