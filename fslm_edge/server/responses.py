"""Response bodies and stream chunks in OpenAI's shapes, with the stack's
details in an extra top-level field ``fslm_edge`` (docs/server.md)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict

from ..events import ContextWarning, StackResult, StageOutput, StageWarning
from .protocol import GenerationRequest

StackWarning = ContextWarning | StageWarning
EXTRA = "fslm_edge"  # the extra field: OpenAI clients keep it as an unknown attribute and ignore it


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def finish_reason(result: StackResult) -> str:
    """OpenAI's finish_reason from the final stage's stop reason."""
    finals = [s for s in result.stages if s.sample in (0, result.chosen_sample)]
    return "length" if finals and finals[-1].stats.stop_reason == "length" else "stop"


def usage(result: StackResult) -> dict:
    """Tokens of every stage (every sample's): its prompt and what it generated."""
    prompt = sum(s.stats.prompt_tokens for s in result.stages)
    completion = sum(s.stats.generated_tokens for s in result.stages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def stage_dict(output: StageOutput) -> dict:
    return {"name": output.name, "sample": output.sample, "prompt": output.prompt, "text": output.text,
            "stats": asdict(output.stats)}


def result_extra(request: GenerationRequest, result: StackResult, warnings: list[StackWarning]) -> dict:
    extra = {
        "input": result.question,
        "stages": [stage_dict(s) for s in result.stages],
        "seconds": result.seconds,
        "warnings": [warning_dict(w) for w in warnings],
        "dropped_messages": request.dropped_messages,
    }
    if result.votes:
        extra["votes"] = list(result.votes)
        extra["chosen_sample"] = result.chosen_sample
    return extra


def full_response(request: GenerationRequest, result: StackResult, warnings: list[StackWarning]) -> dict:
    """The ``stream: false`` answer."""
    if request.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": result.answer},
                  "logprobs": None, "finish_reason": finish_reason(result)}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": result.answer, "logprobs": None, "finish_reason": finish_reason(result)}
        obj = "text_completion"
    return {"id": new_id(request.kind), "object": obj, "created": int(time.time()), "model": request.model,
            "choices": [choice], "usage": usage(result), EXTRA: result_extra(request, result, warnings)}


class ChunkWriter:
    """Server-sent events of one streamed answer: the final stage's text as
    OpenAI chunks, the other events as chunks whose choice is empty (no
    content) and whose ``fslm_edge`` field says what happened."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.id = new_id(request.kind)
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if request.kind == "chat" else "text_completion"

    def _chunk(self, choice_text: str | None, finish: str | None = None, role: bool = False,
               extra: dict | None = None) -> bytes:
        if self.request.kind == "chat":
            delta: dict = {"role": "assistant"} if role else {}
            if choice_text is not None:
                delta["content"] = choice_text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": choice_text or "", "logprobs": None, "finish_reason": finish}
        body = {"id": self.id, "object": self.object, "created": self.created, "model": self.request.model,
                "choices": [choice]}
        if extra is not None:
            body[EXTRA] = extra
        return sse(body)

    def opening(self) -> bytes:
        return self._chunk("", role=True)

    def content(self, text: str) -> bytes:
        return self._chunk(text)

    def progress(self, event) -> bytes:
        return self._chunk(None, extra=progress_extra(event))

    def closing(self, result: StackResult, warnings: list[StackWarning]) -> bytes:
        """The finish_reason chunk (with the whole result in ``fslm_edge``), the
        usage chunk when asked for, and the end marker."""
        extra = {"event": "result", **result_extra(self.request, result, warnings), "usage": usage(result)}
        out = self._chunk(None, finish_reason(result), extra=extra)
        if self.request.include_usage:  # OpenAI's usage chunk: no choices
            out += sse({"id": self.id, "object": self.object, "created": self.created, "model": self.request.model,
                        "choices": [], "usage": usage(result)})
        return out + DONE


def progress_extra(event) -> dict:
    """A stage event as the ``fslm_edge`` field of a progress chunk: its fields,
    ``type`` renamed ``event``; prompts are left to the result."""
    fields = asdict(event)
    fields.pop("prompt", None)
    return {"event": fields.pop("type"), **fields}


def warning_dict(warning: StackWarning) -> dict:
    fields = asdict(warning)
    fields.pop("type")
    return fields


def sse(body: dict) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"


DONE = b"data: [DONE]\n\n"
