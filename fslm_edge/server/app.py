"""The Starlette application: routes, API key, body limit, queueing,
streaming, and errors in OpenAI's shape. The server never serves files: a
request names a served model id, nothing else."""

from __future__ import annotations

import asyncio
import functools
import hmac
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import FslmError
from ..events import ContextWarning, StackResult, StageStart, StageWarning, TextDelta
from .errors import APIError, from_fslm_error, internal_error
from .protocol import GenerationRequest, parse_chat, parse_completion, parse_json_body, shown
from .responses import DONE, ChunkWriter, StackWarning, full_response, sse
from .workers import END, ModelWorkers, QueueFull, QueueTimeout, Run


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    timeout_s: float = 300.0  # per request: waiting for an instance and generating
    max_body_bytes: int = 1 << 20


def create_app(models: dict[str, ModelWorkers], settings: Settings) -> Starlette:
    server = _Server(models, settings)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths and wrong methods, in the same error shape."""
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return _error_response(APIError(exc.status_code, f"{request.method} {shown(request.url.path, 200, False)}: "
                                    f"{exc.detail}", kind))


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _answers_errors(handler: Callable[..., Awaitable[Response]]):
    """Any failure inside a handler becomes an error answer; the server stays up."""

    @functools.wraps(handler)
    async def wrapper(self: _Server, request: Request) -> Response:
        try:
            return await handler(self, request)
        except APIError as error:
            return _error_response(error)
        except FslmError as exc:
            return _error_response(from_fslm_error(exc))
        except Exception:
            self.log(f"error: {request.method} {request.url.path} failed:\n{traceback.format_exc()}")
            return _error_response(internal_error())

    return wrapper


class _Server:
    def __init__(self, models: dict[str, ModelWorkers], settings: Settings):
        self.models = models
        self.settings = settings
        self.started = int(time.time())

    @staticmethod
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # -- plain endpoints -------------------------------------------------------
    @_answers_errors
    async def health(self, request: Request) -> Response:
        """Liveness for anyone; the per-model queue figures only with the key."""
        body: dict = {"status": "ok"}
        if self._authorized(request):
            body["models"] = {name: workers.status() for name, workers in self.models.items()}
        return JSONResponse(body)

    @_answers_errors
    async def list_models(self, request: Request) -> Response:
        self._check_key(request)
        data = [{"id": name, "object": "model", "created": self.started, "owned_by": "fslm-edge",
                 "fslm_edge": {"stages": [s.name for s in workers.stacks[0].config.stages],
                               "description": workers.stacks[0].config.description,
                               "workers": workers.slots.size}}
                for name, workers in self.models.items()]
        return JSONResponse({"object": "list", "data": data})

    @_answers_errors
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, parse_chat)

    @_answers_errors
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, parse_completion)

    # -- checks ---------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        if self.settings.api_key is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.settings.api_key.encode())

    def _check_key(self, request: Request) -> None:
        if not self._authorized(request):
            missing = "authorization" not in request.headers
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'" if missing
                           else "wrong API key", "invalid_request_error", None, "invalid_api_key")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = APIError(413, f"the request body is larger than {limit} bytes", "invalid_request_error",
                             None, "request_too_large")
        length = request.headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > limit):
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    # -- generation ---------------------------------------------------------------
    async def _generate(self, request: Request, parse: Callable[[dict], GenerationRequest]) -> Response:
        self._check_key(request)
        wanted = parse(parse_json_body(await self._read_body(request)))
        workers = self.models.get(wanted.model)
        if workers is None:
            raise APIError(404, f"model {shown(wanted.model)} is not served here; served: {', '.join(self.models)}",
                           "invalid_request_error", "model", "model_not_found")
        workers.counters.requests += 1
        deadline = time.monotonic() + self.settings.timeout_s
        try:
            stack = await workers.slots.acquire(self.settings.timeout_s)
        except (QueueFull, QueueTimeout) as exc:
            workers.counters.refused += 1
            why = "the queue is full" if isinstance(exc, QueueFull) else "no instance became free in time"
            raise APIError(503, f"model '{wanted.model}' is busy ({why}); retry later", "server_error", None,
                           "server_busy", {"Retry-After": str(workers.retry_after())}) from None
        run = Run(workers, stack, wanted.question, _stack_options(wanted)).start()
        if wanted.stream:
            return await self._stream(request, run, wanted, deadline)
        return await self._answer(request, run, wanted, deadline)

    async def _answer(self, request: Request, run: Run, wanted: GenerationRequest, deadline: float) -> Response:
        """``stream: false``: wait for the result, watching for the client leaving."""
        collecting = asyncio.ensure_future(_collect(run))
        leaving = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({collecting, leaving}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
        if collecting not in done:
            collecting.cancel()
            if leaving in done:
                run.stop()
                return Response(status_code=499)  # nobody reads it: the client has gone
            await run.stop_and_wait()
            run.workers.counters.timed_out += 1
            raise self._timeout_error()
        result, warnings = collecting.result()  # raises the run's FslmError, if any
        run.workers.counters.answered += 1
        return JSONResponse(full_response(wanted, result, warnings))

    def _timeout_error(self) -> APIError:
        return APIError(504, f"the request took longer than the server's limit of {self.settings.timeout_s:g} s",
                        "server_error", None, "timeout")

    async def _stream(self, request: Request, run: Run, wanted: GenerationRequest, deadline: float) -> Response:
        """``stream: true``: the first event decides between an error answer (a
        bad prompt is still a 400) and a 200 event stream."""
        try:
            first = await asyncio.wait_for(run.events.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            await run.stop_and_wait()
            run.workers.counters.timed_out += 1
            raise self._timeout_error() from None
        except BaseException:
            run.stop()
            raise
        if isinstance(first, FslmError):
            run.workers.counters.failed += 1
            raise first
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        # The background task stops the run even if the client left before the first chunk was sent
        # (the body iterator is then never started, so its own clean-up never runs).
        return StreamingResponse(self._chunks(run, wanted, first, deadline), media_type="text/event-stream",
                                 headers=headers, background=BackgroundTask(run.stop))

    async def _chunks(self, run: Run, wanted: GenerationRequest, first, deadline: float) -> AsyncIterator[bytes]:
        writer = ChunkWriter(wanted)
        final = _FinalText()
        warnings: list[StackWarning] = []
        item = first
        try:
            yield writer.opening()
            while item is not END:
                if isinstance(item, FslmError):
                    run.workers.counters.failed += 1
                    yield sse(from_fslm_error(item).body()) + DONE
                    return
                if isinstance(item, StackResult):
                    if not final.streamed and item.answer:  # a voted answer is known only now
                        yield writer.content(item.answer)
                    run.workers.counters.answered += 1
                    await run.finished.wait()  # the instance is free before the client hears the end
                    yield writer.closing(item, warnings)
                    return
                if isinstance(item, (ContextWarning, StageWarning)):
                    warnings.append(item)
                text = final.content(item)
                if text is None:
                    yield writer.progress(item)
                elif text:
                    yield writer.content(text)
                try:
                    item = await asyncio.wait_for(run.events.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    await run.stop_and_wait()
                    run.workers.counters.timed_out += 1
                    yield sse(self._timeout_error().body()) + DONE
                    return
        finally:  # also when the client disconnected and the response was cancelled
            run.stop()


class _FinalText:
    """Which events are the final stage's answer text (streamed as content):
    its deltas when it runs once, trimmed the way the final answer is."""

    def __init__(self):
        self.live = False
        self.streamed = False
        self._pending = ""  # whitespace held back: it is content only if more text follows

    def content(self, event) -> str | None:
        if isinstance(event, StageStart):
            self.live = event.final and event.sample == 0
            return None
        if not (self.live and isinstance(event, TextDelta)):
            return None
        text = self._pending + event.text
        if not self.streamed:
            text = text.lstrip()
        stripped = text.rstrip()
        self._pending = text[len(stripped):]
        if stripped:
            self.streamed = True
        return stripped


async def _collect(run: Run) -> tuple[StackResult, list[StackWarning]]:
    warnings: list[StackWarning] = []
    result = None
    while True:
        item = await run.events.get()
        if item is END:
            break
        if isinstance(item, FslmError):
            run.workers.counters.failed += 1
            raise item
        if isinstance(item, (ContextWarning, StageWarning)):
            warnings.append(item)
        if isinstance(item, StackResult):
            result = item
    if result is None:
        raise RuntimeError("the stack ended without a result")
    return result, warnings


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _stack_options(wanted: GenerationRequest) -> dict:
    options: dict = {}
    if wanted.final:
        options["final"] = dict(wanted.final)
    if wanted.json_schema is not None:
        options["json_schema"] = wanted.json_schema
    return options
