"""Continuous batching: many generations on one model, one ``llama_decode`` a step.

``BatchedDecoder`` owns its own load of a GGUF file (the weights are
memory-mapped, so they are shared with every other load of the file) and one
llama.cpp context whose unified KV cache holds ``slots`` sequences of up to
``n_ctx`` tokens each. Any number of threads call ``generate`` at once (same
contract as ``LoadedModel.generate``); a scheduler thread packs, every step,
one token of each running sequence and chunks of the prompts still to be read
into one batch, decodes it, and samples each sequence with its own llama.cpp
sampler chain (the chain ``Llama.generate`` builds: penalties, grammar, then
greedy or top-k/top-p/min-p/temperature/seed), so on float weights a batched
generation is the one a lone ``generate`` makes. On quantized weights the
matmuls round by how many rows share them, so a token can differ where two
are nearly tied (engine/scoring.py's docstring).

LoRA adapters are set per llama.cpp context, so a step decodes only the
sequences under one adapter (and scale); the others wait. The adapter set
stays while sequences under it are left, up to ``_MAX_WAIT`` steps of
another's waiting (``_pick_group``).

Other native work on the same file's other contexts (a stage's option
scoring, ``LoadedModel.exclusive``) runs on the scheduler thread between two
decodes (``run_between_steps``): on a CPU, two contexts decoding at once fight
for the same cores with spinning threads and both crawl.

Whether batching pays depends on the weights' matmul kernels:
``benchmarks/bench_batch.py`` measures it (docs/server.md quotes it: on an
AVX-512 CPU a BF16 copy decodes 4 sequences at 2.1x the tokens/s of one at a
time, the packaged Q4_1 file at 1.0x).
"""

from __future__ import annotations

import ctypes
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from ..config import Sampling
from ..errors import ContextOverflowError, FslmError, RuntimeFailure
from .model import ClosedModelError, LoadedModel
from .native import native_lock

AdapterKey = tuple  # () for none, else (resolved path, scale)
_PENALTY_LAST_N = 64  # Llama's last_n_tokens_size: the repeat penalty looks this far back
_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed
_FINISHED = object()
_MAX_WAIT = 8  # steps a sequence under another adapter waits at most while the current adapter's run


@dataclass
class _Sequence:
    tokens: list[int]  # prompt, then what was sampled
    prompt_len: int
    sampling: Sampling
    adapter: AdapterKey
    cancel: threading.Event | None
    first_banned: np.ndarray | None
    grammar: str | None
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    slot: int = -1
    decoded: int = 0  # positions already in the KV cache
    sampler: object = None
    abandoned: bool = False  # the consumer stopped reading
    order: int = 0  # arrival, for fairness between adapter groups
    waited: int = 0  # steps passed over

    @property
    def produced(self) -> int:
        return len(self.tokens) - self.prompt_len


class BatchedDecoder:
    """Generations from many threads decoded together on one model file."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int, slots: int = 4, n_batch: int = 512,
                 gpu_layers: int = 0):
        if slots < 1:
            raise ValueError("a batched decoder needs at least one slot")
        self.model = LoadedModel(path, n_ctx=256, n_threads=n_threads, gpu_layers=gpu_layers)
        self.n_ctx, self.slots, self.n_batch = n_ctx, slots, n_batch
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max, params.kv_unified = slots, True
        params.n_threads = params.n_threads_batch = n_threads
        with native_lock:
            ctx = llama_cpp.llama_init_from_model(self.model.model_handle, params)
        if not ctx:
            self.model.close()
            raise RuntimeFailure(f"llama.cpp could not create a {slots}-sequence context on {Path(path).name}")
        self._ctx = ctx
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._vocab = self.model.vocab_handle
        self._n_vocab = self.model.n_vocab
        self._free_slots = list(range(slots))[::-1]
        self._waiting: list[_Sequence] = []  # registered, no slot yet
        self._running: list[_Sequence] = []
        self._active: AdapterKey = ()
        self._arrivals = itertools.count()
        self._cond = threading.Condition()
        self._jobs: list[tuple[Callable, queue.Queue]] = []  # run_between_steps work, in arrival order
        self._adapter_lock = threading.Lock()
        self._closing = False
        self.steps = 0  # decodes made (for tests and benchmarks)
        self.max_rows = 0  # the most sequences one decode held
        self.rows = 0  # sequences sampled, summed over decodes (rows / steps: how full a decode is)
        self._thread = threading.Thread(target=self._schedule, name="fslm-edge batch decoder", daemon=True)
        self._thread.start()

    # -- the consumers' side ----------------------------------------------------
    def generate(self, prompt_tokens: list[int], sampling: Sampling, cancel: threading.Event | None = None,
                 first_banned: np.ndarray | None = None, grammar: str | None = None,
                 adapter: AdapterKey = ()) -> Iterator[int]:
        """Sampled token ids until EOG, cancel or ``max_tokens`` (``LoadedModel.generate``'s
        contract), with the adapter ``(path, scale)`` or none (``()``)."""
        if len(prompt_tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt needs {len(prompt_tokens)} tokens, more than the context size {self.n_ctx}; "
                "shorten the input or raise context_size", prompt_tokens=len(prompt_tokens), context_size=self.n_ctx)
        if not prompt_tokens:
            raise ValueError("a prompt holds at least one token")
        if adapter:
            with self._adapter_lock:
                self.model.add_adapter(adapter[0])
        seq = _Sequence(list(prompt_tokens), len(prompt_tokens), sampling, adapter, cancel, first_banned, grammar)
        with self._cond:
            if self._closing:
                raise ClosedModelError(f"the batched decoder of {self.model.path.name} was closed")
            seq.order = next(self._arrivals)
            self._waiting.append(seq)
            self._cond.notify_all()
        return self._tokens(seq)

    def run_between_steps(self, work: Callable[[], object]):
        """Run ``work()`` on the scheduler thread between two decodes and return
        what it returns (or raise what it raises)."""
        if threading.current_thread() is self._thread:
            return work()
        done: queue.Queue = queue.Queue(1)
        with self._cond:
            if self._closing:
                raise ClosedModelError(f"the batched decoder of {self.model.path.name} was closed")
            self._jobs.append((work, done))
            self._cond.notify_all()
        ok, value = done.get()
        if not ok:
            raise value
        return value

    def _tokens(self, seq: _Sequence) -> Iterator[int]:
        try:
            while True:
                item = seq.out.get()
                if item is _FINISHED:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with self._cond:
                seq.abandoned = True
                self._cond.notify_all()

    def close(self) -> None:
        """Stop the scheduler (every unfinished generation ends with
        ``ClosedModelError``), then free the context and the model."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        with native_lock:
            llama_cpp.llama_free(self._ctx)
        self.model.close()

    # -- the scheduler thread ---------------------------------------------------
    def _schedule(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._jobs and not self._live():
                    self._cond.wait()
                if self._closing:
                    break
                jobs, self._jobs = self._jobs, []
                self._admit()
                group = self._pick_group()
            self._run_jobs(jobs)
            if group:
                try:
                    self._step(group)
                except Exception as exc:  # a bug must not leave readers waiting for ever
                    failure = RuntimeFailure(f"batched decoding failed ({type(exc).__name__}: {exc})")
                    for seq in group:
                        if seq in self._running:
                            self._finish(seq, failure)
        closed = ClosedModelError(f"the batched decoder of {self.model.path.name} was closed")
        for seq in self._running + self._waiting:
            self._finish(seq, closed)
        with self._cond:
            jobs, self._jobs = self._jobs, []
        for _, done in jobs:
            done.put((False, closed))

    @staticmethod
    def _run_jobs(jobs: list[tuple[Callable, queue.Queue]]) -> None:
        for work, done in jobs:
            try:
                done.put((True, work()))
            except BaseException as exc:  # handed to the caller, whose thread raises it
                done.put((False, exc))

    def _live(self) -> bool:
        self._drop_stopped()
        return bool(self._running) or bool(self._waiting and self._free_slots)

    def _drop_stopped(self) -> None:
        """Sequences whose reader left or whose cancel flag is set end now."""
        for seq in list(self._running):
            if seq.abandoned or (seq.cancel is not None and seq.cancel.is_set()):
                self._finish(seq)
        for seq in list(self._waiting):
            if seq.abandoned or (seq.cancel is not None and seq.cancel.is_set()):
                self._waiting.remove(seq)
                seq.out.put(_FINISHED)

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            seq = self._waiting.pop(0)
            try:
                seq.sampler = self._sampler(seq)
            except FslmError as exc:
                seq.out.put(exc)
                continue
            seq.slot = self._free_slots.pop()
            self._running.append(seq)

    def _pick_group(self) -> list[_Sequence]:
        """The sequences to decode this step: those under the adapter already
        set, while any are left and no other has waited ``_MAX_WAIT`` steps
        (switching adapters costs a step's worth of setup); else those under the
        adapter of the sequence that waited longest."""
        if not self._running:
            return []
        oldest = max(self._running, key=lambda s: (s.waited, -s.order))
        key = oldest.adapter
        if oldest.waited < _MAX_WAIT and any(s.adapter == self._active for s in self._running):
            key = self._active
        group = [s for s in self._running if s.adapter == key]
        for seq in self._running:
            seq.waited = 0 if seq.adapter == key else seq.waited + 1
        return group

    def _step(self, group: list[_Sequence]) -> None:
        """One decode: every ready sequence's last token, then prompt chunks."""
        try:
            self._use_adapter(group[0].adapter)
        except FslmError as exc:
            for seq in group:
                self._finish(seq, exc)
            return
        batch, rows = self._batch, []
        n = 0
        # sequences that have read their prompt take one row each first (steady latency), then prompts
        ordered = sorted(group, key=lambda s: s.decoded < len(s.tokens) - 1)
        for seq in ordered:
            take = len(seq.tokens) - seq.decoded
            take = min(take, self.n_batch - n)
            if take <= 0:
                break
            for i in range(take):
                pos = seq.decoded + i
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = seq.tokens[pos], pos, 1
                batch.seq_id[n][0] = seq.slot
                last = pos == len(seq.tokens) - 1
                batch.logits[n] = last
                if last:
                    rows.append((seq, n))
                n += 1
            seq.decoded += take
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, batch)
        self.steps += 1
        self.rows += len(rows)
        self.max_rows = max(self.max_rows, len(rows))
        if status != 0:
            failure = RuntimeFailure(f"llama.cpp could not decode on {self.model.path.name} (status {status})")
            for seq in group:
                self._finish(seq, failure)
            return
        for seq, row in rows:
            self._sample(seq, row)

    def _sample(self, seq: _Sequence, row: int) -> None:
        if seq.first_banned is not None and seq.produced == 0:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, row), shape=(self._n_vocab,))
            logits[seq.first_banned] = -np.inf
        token = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, row)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq)
            return
        seq.tokens.append(token)
        seq.out.put(token)
        if seq.produced >= seq.sampling.max_tokens or len(seq.tokens) >= self.n_ctx:
            self._finish(seq)

    def _finish(self, seq: _Sequence, error: BaseException | None = None) -> None:
        if seq in self._running:
            self._running.remove(seq)
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), seq.slot, -1, -1)
            self._free_slots.append(seq.slot)
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None
        seq.out.put(error if error is not None else _FINISHED)

    def _use_adapter(self, key: AdapterKey) -> None:
        if key == self._active:
            return
        if not key:
            status = llama_cpp.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.model.adapter_handle(key[0]))
            scales = (ctypes.c_float * 1)(key[1])
            status = llama_cpp.llama_set_adapters_lora(self._ctx, handles, 1, scales)
        if status != 0:
            raise RuntimeFailure(f"llama.cpp could not switch adapters (status {status})")
        self._active = key

    def _sampler(self, seq: _Sequence):
        """The chain ``Llama.generate`` builds for these settings."""
        s = seq.sampling
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda sampler: llama_cpp.llama_sampler_chain_add(chain, sampler)  # noqa: E731
        # called with the arguments Llama passes through the same binding, so both paths penalise alike
        add(llama_cpp.llama_sampler_init_penalties(self._n_vocab, _PENALTY_LAST_N, s.repeat_penalty, 0.0, 0.0))
        if seq.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, seq.grammar.encode("utf-8"), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                raise RuntimeFailure("llama.cpp could not parse a grammar that was checked before")
            add(grammar)
        if s.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(s.top_k))
            add(llama_cpp.llama_sampler_init_typical(1.0, 1))
            add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(s.temperature))
            add(llama_cpp.llama_sampler_init_dist(_DEFAULT_SEED if s.seed is None else s.seed))
        return chain


class DecoderPool:
    """One ``BatchedDecoder`` per model file, shared by every ``ModelPool`` (and
    so every ``Stack``) given it: their generations on that file are decoded
    together. Closed by its creator, after the stacks that use it."""

    def __init__(self, slots: int, n_ctx: int, n_threads: int, gpu_layers: int = 0):
        self.slots, self.n_ctx, self.n_threads, self.gpu_layers = slots, n_ctx, n_threads, gpu_layers
        self._decoders: dict[Path, BatchedDecoder] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> BatchedDecoder:
        key = Path(path).resolve()
        with self._lock:
            decoder = self._decoders.get(key)
            if decoder is None:
                decoder = BatchedDecoder(key, self.n_ctx, self.n_threads, self.slots, gpu_layers=self.gpu_layers)
                self._decoders[key] = decoder
            return decoder

    @property
    def decoders(self) -> list[BatchedDecoder]:
        return list(self._decoders.values())

    def close(self) -> None:
        with self._lock:
            for decoder in self._decoders.values():
                decoder.close()
            self._decoders.clear()
