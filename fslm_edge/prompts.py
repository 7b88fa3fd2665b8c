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
from .templates import render_template


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


def stage_user_text(stage: StageConfig, values: Mapping[str, str]) -> str:
    """The stage template filled with ``{input}`` and upstream stage texts."""
    return render_template(stage.template, values)


def stage_prompt(stage: StageConfig, values: Mapping[str, str], chat: ChatTemplate | None) -> str:
    """The full prompt text sent to the model for ``stage``.

    Without a chat template (or with ``chat = false``) the system prompt, if
    any, is put before the user text, separated by a blank line.
    """
    user = stage_user_text(stage, values)
    if stage.chat and chat is not None:
        messages = []
        if stage.system:
            messages.append({"role": "system", "content": stage.system})
        messages.append({"role": "user", "content": user})
        return chat.prompt(messages, stage.drop_bos)
    if stage.system:
        return f"{stage.system}\n\n{user}"
    return user
