"""A pool of loaded stacks per model id, a bounded wait queue in front of it,
and the bridge that runs one question on a worker thread and hands its events
to the event loop.

A ``Stack`` runs one question at a time, so parallel requests for one model
id need several instances; they share the memory-mapped GGUF weights. With
``--workers`` each decodes on its own; with ``--parallel`` they share one
batched decoder per model file, so the requests under way are decoded
together, one ``llama_decode`` a step for all those at a stage with the same
adapter (``engine.batch``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..engine import DecoderPool
from ..errors import FslmError, RuntimeFailure
from ..events import StackResult
from ..stack import Stack


class QueueFull(Exception):
    """Every instance is busy and the wait queue is full."""


class QueueTimeout(Exception):
    """No instance became free within the request's timeout."""


class SlotQueue:
    """Hands out free items first come, first served; at most ``max_waiting``
    callers wait. Used from the event loop's thread only."""

    def __init__(self, items: list, max_waiting: int):
        self._free = list(items)
        self._waiters: deque[asyncio.Future] = deque()
        self.max_waiting = max_waiting
        self.size = len(items)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def busy(self) -> int:
        return self.size - len(self._free)

    async def acquire(self, timeout: float):
        if self._free and not self.waiting:
            return self._free.pop()
        if self.waiting >= self.max_waiting:
            raise QueueFull
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        except BaseException:  # the client went away while waiting
            self._give_up(waiter)
            raise
        if not done:
            self._give_up(waiter)
            raise QueueTimeout
        return waiter.result()

    def _give_up(self, waiter: asyncio.Future) -> None:
        if waiter.done() and not waiter.cancelled():
            self.release(waiter.result())  # it was handed an item just now: pass it on
        else:
            waiter.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def release(self, item) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        self._free.append(item)


@dataclass
class Counters:
    requests: int = 0
    answered: int = 0
    refused: int = 0  # 503: queue full or no instance in time
    cancelled: int = 0  # the client went away and the generation was stopped
    timed_out: int = 0
    failed: int = 0


@dataclass
class ModelWorkers:
    """The instances serving one model id."""

    model_id: str
    stacks: list[Stack]
    slots: SlotQueue
    decoders: DecoderPool | None = None  # shared by the stacks (--parallel); closed after them
    counters: Counters = field(default_factory=Counters)
    _seconds: float = 0.0  # a moving average of run times, for Retry-After

    @classmethod
    def create(cls, model_id: str, stacks: list[Stack], max_waiting: int,
               decoders: DecoderPool | None = None) -> ModelWorkers:
        return cls(model_id, stacks, SlotQueue(stacks, max_waiting), decoders)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one queue's worth of runs."""
        per_run = self._seconds or 1.0
        return max(1, math.ceil(per_run * (self.slots.waiting + 1) / self.slots.size))

    def record(self, seconds: float) -> None:
        self._seconds = seconds if not self._seconds else 0.8 * self._seconds + 0.2 * seconds

    def status(self) -> dict:
        batched = {}
        if self.decoders is not None:  # how full llama.cpp's decodes have been so far
            decoders = self.decoders.decoders
            batched["largest_batch"] = max((d.max_rows for d in decoders), default=0)
            batched["decodes"] = sum(d.steps for d in decoders)
            batched["decoded_rows"] = sum(d.rows for d in decoders)
        return {"workers": self.slots.size, "busy": self.slots.busy, "waiting": self.slots.waiting,
                "max_waiting": self.slots.max_waiting, "batched": self.decoders is not None, **batched,
                **self.counters.__dict__}

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()
        if self.decoders is not None:
            self.decoders.close()


END = object()  # the last item a run puts on its queue


class Run:
    """One question on one stack instance, on its own thread. Its events (and
    a raised FslmError, and finally ``END``, once the instance is free) arrive
    on ``self.events``; ``stop()`` sets the cancel flag the engine checks after
    every token."""

    def __init__(self, workers: ModelWorkers, stack: Stack, question: str, options: dict[str, Any]):
        self.workers = workers
        self.stack = stack
        self.question = question
        self.options = options
        self.cancel = threading.Event()
        self.result: StackResult | None = None
        self.finished = asyncio.Event()  # set on the loop once the instance is released
        self.events: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"fslm-edge {workers.model_id}", daemon=True)

    def start(self) -> Run:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.cancel.set()

    async def stop_and_wait(self, limit_s: float = 10.0) -> None:
        """Stop, and return once the instance is free again (within a token or
        two), so that a client told of a timeout finds it free."""
        self.stop()
        try:
            await asyncio.wait_for(self.finished.wait(), limit_s)
        except asyncio.TimeoutError:
            pass

    def _emit(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def _work(self) -> None:
        started = time.perf_counter()
        try:
            for event in self.stack.stream(self.question, cancel=self.cancel, **self.options):
                if isinstance(event, StackResult):
                    self.result = event
                self._emit(event)
        except FslmError as exc:
            self._emit(exc)
        except Exception as exc:  # llama.cpp or a bug: the request fails, the server stays up
            self._emit(RuntimeFailure(f"{type(exc).__name__}: {exc}"))
        finally:
            seconds = time.perf_counter() - started
            try:  # the instance is free again only now, its generation fully stopped
                self._loop.call_soon_threadsafe(self._finish, seconds)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass

    def _finish(self, seconds: float) -> None:
        """On the loop: free the instance, then end the events, so that whoever
        reads ``END`` (and answers the client) finds the instance free."""
        if self.cancel.is_set() and self.result is not None and self.result.cancelled:
            self.workers.counters.cancelled += 1
        self.workers.record(seconds)
        self.workers.slots.release(self.stack)
        self.finished.set()
        self.events.put_nowait(END)
