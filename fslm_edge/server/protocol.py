"""Request bodies of ``/v1/chat/completions`` and ``/v1/completions``, checked
field by field into one :class:`GenerationRequest` (pure: no HTTP here).

A body is hostile input: every field is type-checked, a field that is not part
of OpenAI's API is a 400, and so is an OpenAI field this server cannot honour
(``n`` > 1, ``logprobs``, ``tools``, ...) when set to anything but its neutral
value. No field can name a file or a path: ``model`` is looked up among the
served ids only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import bad_request

MAX_STOP_STRINGS = 16
MAX_MESSAGES = 1024

# Sampling fields that apply to the final stage: request field -> the runtime's ``final`` key.
_FINAL_SAMPLING = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "repeat_penalty": "repeat_penalty", "seed": "seed", "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
}
# OpenAI fields accepted only at their neutral value (what a client sends by default): field -> allowed values.
_NEUTRAL = {
    "n": (None, 1), "best_of": (None, 1), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
    "tool_choice": (None, "none"), "function_call": (None, "none"),
}
_EMPTY_OK = {"logit_bias", "tools", "functions"}  # accepted when absent, null or empty
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}  # do not change the answer
_COMMON = {"model", "stream", "stream_options", "stop", "response_format", *_FINAL_SAMPLING, *_NEUTRAL,
           *_EMPTY_OK, *_IGNORED}
CHAT_FIELDS = frozenset({"messages", *_COMMON})
COMPLETION_FIELDS = frozenset({"prompt", *_COMMON})
_MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "function_call"}
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass(frozen=True)
class GenerationRequest:
    """What one request asks of a stack."""

    kind: str  # "chat" or "completion"
    model: str
    question: str
    stream: bool = False
    include_usage: bool = False
    final: dict[str, Any] = field(default_factory=dict)  # sampling overrides for the final stage
    json_schema: dict | None = None
    dropped_messages: int = 0  # system messages and earlier turns, which a stack does not see


def parse_json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also integers too long to convert, nesting too deep
        raise bad_request(f"the request body is not valid JSON ({shown(str(exc), 200)})") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def parse_chat(body: Mapping[str, Any]) -> GenerationRequest:
    _check_fields(body, CHAT_FIELDS)
    question, dropped = _question_from_messages(body.get("messages"))
    return _request("chat", body, question, dropped)


def parse_completion(body: Mapping[str, Any]) -> GenerationRequest:
    _check_fields(body, COMPLETION_FIELDS)
    return _request("completion", body, _question_from_prompt(body.get("prompt")), 0)


def _request(kind: str, body: Mapping[str, Any], question: str, dropped: int) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: one of the ids GET /v1/models lists", "model")
    stream = _optional(body, "stream", _is_bool, "true or false") or False
    return GenerationRequest(
        kind=kind, model=model, question=question, stream=stream,
        include_usage=_include_usage(body.get("stream_options"), stream),
        final=_final_sampling(body), json_schema=_json_schema(body.get("response_format")),
        dropped_messages=dropped,
    )


def _check_fields(body: Mapping[str, Any], known: frozenset) -> None:
    for name in body:
        if name not in known:
            raise bad_request(f"unknown field {shown(name)} (this server accepts: {', '.join(sorted(known))})",
                              shown(name, 80, quote=False))
    for name, allowed in _NEUTRAL.items():
        value = body.get(name)
        if name in body and not (value in allowed and type(value) in {type(a) for a in allowed}):
            raise bad_request(f"'{name}' = {shown(json.dumps(value))} is not supported by fslm-edge (leave it unset)",
                              name)
    for name in _EMPTY_OK:
        if body.get(name):
            raise bad_request(f"'{name}' is not supported by fslm-edge (leave it unset)", name)


def _question_from_messages(messages: Any) -> tuple[str, int]:
    """The last message, a user turn, is the stack's input; everything before it
    (system messages, earlier turns) is dropped and counted."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"'messages' has {len(messages)} entries, more than {MAX_MESSAGES}", "messages")
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]")
    last = messages[-1]
    if last["role"] != "user":
        raise bad_request(f"the last message must have role 'user' (it is '{last['role']}'): "
                          "its text is the stack's input", f"messages[{len(messages) - 1}].role")
    text = _content_text(last.get("content"), f"messages[{len(messages) - 1}].content")
    if not text.strip():
        raise bad_request("the last user message is empty; send some text", f"messages[{len(messages) - 1}].content")
    return text, len(messages) - 1


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object with 'role' and 'content'", where)
    for key in message:
        if key not in _MESSAGE_KEYS:
            raise bad_request(f"{where}: unknown field {shown(key)}", f"{where}.{shown(key, 80, quote=False)}")
    if message.get("role") not in _ROLES:
        raise bad_request(f"{where}.role must be one of {', '.join(sorted(_ROLES))}", f"{where}.role")
    _content_text(message.get("content"), f"{where}.content")


def _content_text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts", where)
    pieces = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}[{index}]: only {{\"type\": \"text\", \"text\": \"...\"}} parts are "
                              "supported (no images or audio)", f"{where}[{index}]")
        pieces.append(part["text"])
    return "".join(pieces)


def _question_from_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string (or a list of exactly one string)", "prompt")
    if not prompt.strip():
        raise bad_request("'prompt' is empty; send some text", "prompt")
    return prompt


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise bad_request("'stream_options' is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad_request("'stream_options' must be {\"include_usage\": true|false}", "stream_options")
    value = options.get("include_usage", False)
    if not _is_bool(value):
        raise bad_request("'stream_options.include_usage' must be true or false", "stream_options.include_usage")
    return value


def _final_sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number in [0, 2]"),
        "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "min_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "repeat_penalty": (lambda v: _is_number(v) and 0 < v <= 10, "a number in (0, 10]"),
        "seed": (lambda v: _is_int(v) and -(2**63) <= v < 2**64, "an integer"),
        "max_tokens": (lambda v: _is_int(v) and 1 <= v <= 1_000_000, "a positive integer"),
        "max_completion_tokens": (lambda v: _is_int(v) and 1 <= v <= 1_000_000, "a positive integer"),
    }
    final: dict[str, Any] = {}
    for name, (ok, description) in checks.items():
        value = _optional(body, name, ok, description)
        if value is not None:
            final[_FINAL_SAMPLING[name]] = float(value) if name in ("temperature", "top_p", "min_p",
                                                                   "repeat_penalty") else value
    if "seed" in final:
        final["seed"] = final["seed"] % 2**32  # llama.cpp seeds are 32-bit
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (not isinstance(stops, list) or not stops or len(stops) > MAX_STOP_STRINGS
                or not all(isinstance(s, str) and s for s in stops)):
            raise bad_request(f"'stop' must be a non-empty string or a list of 1 to {MAX_STOP_STRINGS} "
                              "non-empty strings", "stop")
        final["stop"] = stops
    return final


def _json_schema(response_format: Any) -> dict | None:
    """``response_format`` -> the JSON Schema the final text must follow (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("'response_format.json_schema.schema' must be a JSON Schema object",
                              "response_format.json_schema.schema")
        return schema
    raise bad_request("'response_format.type' must be 'text', 'json_object' or 'json_schema'", "response_format")


def _optional(body: Mapping[str, Any], name: str, ok: Callable[[Any], bool], description: str) -> Any:
    value = body.get(name)
    if value is not None and not ok(value):
        raise bad_request(f"'{name}' must be {description}, not {shown(json.dumps(value))}", name)
    return value


def shown(text: Any, limit: int = 80, quote: bool = True) -> str:
    """A client's text as it appears in an error message: cut to ``limit``."""
    text = str(text)
    cut = text if len(text) <= limit else text[:limit] + "..."
    return f"'{cut}'" if quote else cut


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
