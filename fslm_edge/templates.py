"""Stage prompt templates: plain ``{name}`` substitution, never code.

``{input}`` is the user's question, ``{stage}`` the text an earlier stage
produced. ``{{`` and ``}}`` are literal braces. This module is the single
place that turns a template into a prompt: the runtime and the trainer both
call :func:`render_template`, so train and serve cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class TemplateSyntaxError(ValueError):
    """A template is not plain ``{name}`` substitution."""


def template_fields(template: str) -> tuple[str, ...]:
    """Names referenced by ``template`` in order of first use."""
    return tuple(dict.fromkeys(name for kind, name in _parse(template) if kind == "field"))


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Substitute every ``{name}`` by ``values[name]``; unescape braces."""
    return "".join(text for text, _ in render_template_parts(template, values))


def render_template_parts(template: str, values: Mapping[str, str]) -> list[tuple[str, bool]]:
    """The rendered template as ``(text, trusted)`` pieces: the template's own
    text is trusted, every substituted value (a question, a stage's output) is
    not, so a tokenizer can keep special-token text in values as plain text."""
    out: list[tuple[str, bool]] = []
    for kind, text in _parse(template):
        if kind == "field":
            if text not in values:
                raise KeyError(text)
            out.append((values[text], False))
        else:
            out.append((text, True))
    return out


def _parse(template: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    pos = 0
    for match in _TOKEN.finditer(template):
        if match.start() > pos:
            parts.append(("text", template[pos : match.start()]))
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append(("text", token[0]))
        elif token in ("{", "}"):
            raise TemplateSyntaxError(
                f"unmatched '{token}' at character {match.start()}; write '{token * 2}' for a literal brace"
            )
        else:
            name = match.group(1).strip()
            if not _NAME.match(name):
                raise TemplateSyntaxError(
                    f"'{token}' is not a field: use {{input}} or {{stage_name}} (write '{{{{' for a literal brace)"
                )
            parts.append(("field", name))
        pos = match.end()
    if pos < len(template):
        parts.append(("text", template[pos:]))
    return parts
