"""The one place a stage's prompt string is made, for serving and training.

``stage_prompt`` renders the stage template with the input and upstream
texts, then (if ``chat = true``) wraps it in the model's own chat template
read from the GGUF (``tokenizer.chat_template``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from .config import StageConfig
from .templates import render_template


@dataclass(frozen=True)
class ChatTemplate:
    """A model's Jinja chat template, rendered in a sandbox."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        template = _compile(self.source)
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


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
        text = chat.render(messages)
        if chat.bos_token and text.startswith(chat.bos_token):
            text = text[len(chat.bos_token) :]  # the tokenizer adds BOS itself
        return text
    if stage.system:
        return f"{stage.system}\n\n{user}"
    return user
