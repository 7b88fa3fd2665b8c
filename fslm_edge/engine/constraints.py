"""Structured output: choices, JSON schemas and GBNF grammars as one GBNF text.

Every constraint becomes a llama.cpp GBNF grammar that the grammar sampler
enforces while tokens are sampled (no retries). ``check_grammar`` parses a
grammar with llama.cpp itself, so a bad one is refused when the stack loads,
with llama.cpp's own message and the line it points at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import llama_cpp
from llama_cpp.llama_grammar import json_schema_to_gbnf

from ..errors import InputError
from .native import captured_logs, captured_stderr

MAX_GRAMMAR_BYTES = 1 << 20


class ConstraintError(InputError):
    """A grammar, schema or choice list that cannot constrain generation."""


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def choices_grammar(choices: Sequence[str]) -> str:
    """A grammar whose only sentences are the given strings."""
    if not choices:
        raise ConstraintError("choices is empty; give at least one string")
    for choice in choices:
        if not isinstance(choice, str) or not choice:
            raise ConstraintError(f"choices: {choice!r} is not a non-empty string")
    # An optional leading space: after a prompt ending "Answer:" the model's natural next token is
    # " oxygen"; without it the grammar would force an unnatural first token (the text is stripped).
    return 'root ::= " "? (' + " | ".join(_literal(c) for c in dict.fromkeys(choices)) + ")\n"


def schema_grammar(schema: dict, where: str = "json_schema") -> str:
    """The GBNF of a JSON schema (llama.cpp's converter), after checking that the
    schema itself is valid JSON Schema."""
    check_schema(schema, where)
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, RecursionError, NotImplementedError) as exc:
        raise ConstraintError(f"{where}: llama.cpp's JSON-schema converter cannot use this schema ({exc})") from None


def check_schema(schema: object, where: str = "json_schema") -> None:
    if not isinstance(schema, dict):
        raise ConstraintError(f"{where}: a JSON schema must be an object (a table), not {type(schema).__name__}")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConstraintError(f"{where}: not a valid JSON schema: {exc.message}") from None


def validate_json(text: str, schema: dict) -> str | None:
    """None if ``text`` is JSON that validates against ``schema``, else why not."""
    import jsonschema

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return f"not JSON ({exc})"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return exc.message
    return None


def check_grammar(grammar: str, vocab, where: str) -> None:
    """Parse ``grammar`` with llama.cpp on ``vocab``; ConstraintError naming
    ``where`` (``file`` or ``file:line``) if it is refused."""
    if len(grammar.encode("utf-8")) > MAX_GRAMMAR_BYTES:
        raise ConstraintError(f"{where}: the grammar is larger than {MAX_GRAMMAR_BYTES} bytes")
    if "\x00" in grammar:
        raise ConstraintError(f"{where}: the grammar contains a NUL character")
    with captured_logs() as logs, captured_stderr() as printed:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
        return
    lines = [line.strip() for line in [*printed, *logs] if line.strip()]
    message = _parse_error(lines) or "llama.cpp refused the grammar"
    reason = re.sub(r"\s+at(\s.*)?$", "", message, flags=re.S)
    raise ConstraintError(f"{_with_line(where, grammar, message)}: invalid GBNF grammar: {_short(reason)}; "
                          "see llama.cpp's grammars/README.md")


def _parse_error(lines: list[str]) -> str:
    """llama.cpp's own reason (``expecting ')' at <rest of the grammar>``)."""
    text = "\n".join(lines)
    found = re.search(r"error parsing grammar: (.*?)(?:\n\n|$)", text, re.S)
    if found:
        return found.group(1).strip()
    return " ".join(line for line in lines if "failed to parse" not in line)[:300]


def _with_line(where: str, grammar: str, message: str) -> str:
    """``where:line`` when llama.cpp's message quotes the rest of the grammar
    from the point of the error (``... at <text>``) and that text is found."""
    found = re.search(r" at (.+)$", message, re.S)
    if found and ":" not in where.rsplit("/", 1)[-1]:
        rest = found.group(1).strip()[:40]
        at = grammar.find(rest) if rest else -1
        if at >= 0:
            return f"{where}:{grammar.count(chr(10), 0, at) + 1}"
    return where


def _short(message: str) -> str:
    message = re.sub(r"\s+", " ", message)
    return message if len(message) <= 300 else message[:300] + "..."
