"""Log-likelihood of continuations on a llama.cpp model, reusing the KV cache.

``ChoiceScorer.score(context, continuations)`` decodes the shared context once
(only the part not already in the KV cache from the previous call), takes the
first continuation token's log-probability from the context's last logits, and
then decodes only ``continuation[:-1]`` per choice after rewinding the cache to
the context length (``llama_memory_seq_rm``). Llama's own bookkeeping
(``n_tokens``/``input_ids``) is kept in step, so generation on the same model
afterwards reuses or truncates the cache correctly.

Tokenization at the boundary follows lm-evaluation-harness: the continuation's
tokens are ``tokenize(context + continuation)[len(tokenize(context)):]``.

``BatchScorer`` does the same for many questions in one decode: one sequence
per choice in a unified KV cache, a question's context tokens belonging to all
of its choices' sequences. On float weights (the tiny F32 test model, an F16
copy of SmolLM2) it agrees with scoring each choice from scratch to 1e-3 and
0.035 nats. On quantized weights llama.cpp's matmuls round differently by how
many tokens share them: there the two scorers differ by up to 0.9 nats on long
choices (SmolLM2 Q4_1), and are equally far from the F16 weights on average
(0.20 against 0.21 nats, 100 ARC-Easy questions), which an earlier version of
this note took for a fault of multi-sequence decoding. Batching pays on
weights whose matmuls are fast in bulk: ``benchmarks/bench_eval.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np

from ..errors import ContextOverflowError, RuntimeFailure
from ..prompts import Prompt
from .native import native_lock


@dataclass(frozen=True)
class ChoiceScore:
    logprob: float  # sum of the continuation tokens' log-probabilities
    n_tokens: int
    greedy: bool  # every continuation token was the argmax


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64, copy=False)
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def output_logprobs(ctx, index: int, n_vocab: int) -> np.ndarray:
    """Log-softmax of the logits llama.cpp kept for batch row ``index`` of the last decode."""
    return log_softmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,)))


def split_continuation(model, context: Prompt | str, continuation: str) -> tuple[list[int], list[int]]:
    """Context tokens and continuation tokens, tokenized together (lm-eval style):
    trailing spaces of the context move to the continuation, and the
    continuation is ``tokenize(context + continuation)[len(tokenize(context)):]``.
    The continuation (a choice, a sampled text) is untrusted: no special tokens."""
    if isinstance(context, str):
        context = Prompt.trusted(context)
    parts = list(context.parts)
    moved = ""
    while parts:  # trailing spaces of the context's last parts
        text, trusted = parts[-1]
        stripped = text.rstrip(" ")
        moved = text[len(stripped):] + moved
        if stripped:
            parts[-1] = (stripped, trusted)
            break
        parts.pop()
    head = Prompt(tuple(parts))
    context_tokens = model.tokenize_prompt(head)
    cont = model.tokenize_prompt(head.plus(moved + continuation))[len(context_tokens):]
    if not cont:
        cont = model.tokenize_plain(moved + continuation)
    return context_tokens, cont


class ChoiceScorer:
    """Scores continuations after a context on one ``LoadedModel`` (seq 0)."""

    def __init__(self, model):
        self.model = model
        self.n_vocab = model.n_vocab
        self.n_batch = model.n_batch
        self.decoded_tokens = 0  # tokens actually run through the model (for speed reports)

    # -- cache bookkeeping ----------------------------------------------------
    def _cached(self) -> list[int]:
        return self.model.cached_tokens()

    def _set_cached(self, tokens: Sequence[int]) -> None:
        self.model.set_cached_tokens(tokens)

    def _rewind(self, n: int) -> None:
        self.model.rewind(n)

    def _decode(self, tokens: Sequence[int], start: int, logits: str) -> list[np.ndarray]:
        """Decode ``tokens`` at positions ``start..``; return log-softmax rows for
        the last token (``logits='last'``) or every token (``'all'``)."""
        rows: list[np.ndarray] = []
        batch = self.model.batch_handle
        ctx = self.model.context_handle
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset: offset + self.n_batch]
            last_chunk = offset + self.n_batch >= len(tokens)
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.seq_id[i][0] = 0
                batch.n_seq_id[i] = 1
                batch.logits[i] = logits == "all" or (last_chunk and i == len(chunk) - 1)
            status = llama_cpp.llama_decode(ctx, batch)
            if status != 0:
                raise RuntimeFailure(f"llama_decode returned {status} while scoring")
            self.decoded_tokens += len(chunk)
            wanted = range(len(chunk)) if logits == "all" else ([len(chunk) - 1] if last_chunk else [])
            for i in wanted:
                rows.append(output_logprobs(ctx, i, self.n_vocab))
        return rows

    # -- scoring ---------------------------------------------------------------
    def score(self, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[ChoiceScore]:
        """Log-likelihood of each continuation after ``context`` (token ids),
        computed as ``model.exclusive`` work where the model has it."""
        exclusive = getattr(self.model, "exclusive", None)
        if exclusive is None:
            return self._score(context, continuations)
        return exclusive(lambda: self._score(context, continuations))

    def _score(self, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[ChoiceScore]:
        context = list(context)
        if not context:
            raise ValueError("the context must hold at least one token (BOS or text)")
        longest = max((len(c) for c in continuations), default=0)
        if len(context) + longest > self.model.n_ctx:
            raise ContextOverflowError(f"a scoring request needs {len(context) + longest} tokens, more than "
                                       f"the context size {self.model.n_ctx}")
        cached = self._cached()
        keep = 0
        for a, b in zip(cached, context):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(context) - 1)  # always decode the last context token for its logits
        self._rewind(keep)
        self._set_cached(context[:keep])
        first = self._decode(context[keep:], keep, "last")[0]
        self._set_cached(context)
        scores = []
        n = len(context)
        for cont in continuations:
            cont = list(cont)
            if not cont:
                scores.append(ChoiceScore(0.0, 0, True))
                continue
            total = float(first[cont[0]])
            greedy = int(first.argmax()) == cont[0]
            if len(cont) > 1:
                self._rewind(n)
                rows = self._decode(cont[:-1], n, "all")
                self._set_cached(context + cont[:-1])
                for row, token in zip(rows, cont[1:]):
                    total += float(row[token])
                    greedy = greedy and int(row.argmax()) == token
            scores.append(ChoiceScore(total, len(cont), greedy))
        return scores

    def score_naive(self, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[ChoiceScore]:
        """Reference: evaluate context + continuation from scratch for each choice."""
        scores = []
        for cont in continuations:
            full = list(context) + list(cont)
            self._rewind(0)
            self._set_cached([])
            rows = self._decode(full[:-1], 0, "all")
            self._set_cached(full[:-1])
            picked = rows[len(context) - 1:]
            total = sum(float(row[t]) for row, t in zip(picked, cont))
            greedy = all(int(row.argmax()) == t for row, t in zip(picked, cont))
            scores.append(ChoiceScore(total, len(cont), greedy))
        return scores


Request = tuple[Sequence[int], Sequence[Sequence[int]]]  # context tokens, continuations' tokens


class BatchScorer:
    """Scores the continuations of many contexts (questions) in one
    ``llama_decode`` per group: one sequence per continuation in a unified KV
    cache; a context's tokens belong to all of its continuations' sequences, so
    each context is decoded once and each continuation attends only to its own
    context (agreement with ``ChoiceScorer``: the module's docstring). Owns a
    second llama context on ``model``, closed with the model (or ``close()``)."""

    def __init__(self, model, n_threads: int, max_sequences: int = 64, n_ctx: int = 4096):
        self.model = model
        self.n_vocab = model.n_vocab
        self.n_ctx, self.max_sequences = n_ctx, max_sequences
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ctx, 512
        params.n_seq_max, params.kv_unified = max_sequences, True
        params.n_threads = params.n_threads_batch = n_threads
        with native_lock:
            self._ctx = llama_cpp.llama_init_from_model(model.model_handle, params)
        if not self._ctx:
            raise RuntimeFailure("llama.cpp could not create a batch scoring context")
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, max_sequences)
        self.decoded_tokens = 0
        model.own(self)

    def close(self) -> None:
        """Free the batch and the context (idempotent; the model frees it first)."""
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def _live_ctx(self):
        if not self._ctx:
            raise RuntimeFailure("this batch scorer was closed (or its model was); create another")
        return self._ctx

    def score_many(self, requests: Sequence[Request]) -> list[list[ChoiceScore]]:
        """Each request's continuation scores, in order; requests are packed
        into groups that fit the context and the sequence budget."""
        results: list[list[ChoiceScore]] = []
        group: list[Request] = []
        tokens = sequences = 0
        for context, continuations in requests:
            if not context:
                raise ValueError("the context must hold at least one token (BOS or text)")
            need = len(context) + sum(max(len(c) - 1, 0) for c in continuations)
            if need > self.n_ctx or len(continuations) > self.max_sequences:
                raise ContextOverflowError(f"a scoring request needs {need} tokens and {len(continuations)} "
                                           f"sequences, more than {self.n_ctx} and {self.max_sequences}")
            if group and (tokens + need > self.n_ctx or sequences + len(continuations) > self.max_sequences):
                results += self._score_group(group)
                group, tokens, sequences = [], 0, 0
            group.append((list(context), [list(c) for c in continuations]))
            tokens += need
            sequences += len(continuations)
        if group:
            results += self._score_group(group)
        return results

    def _score_group(self, group: list[Request]) -> list[list[ChoiceScore]]:
        batch, n = self._batch, 0
        rows_of: list[list[list[int]]] = []  # per request, per continuation: batch rows predicting its tokens
        seq = 0

        def add(token: int, pos: int, seqs: range | list[int], logits: bool) -> int:
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, len(seqs), logits
            for k, s in enumerate(seqs):
                batch.seq_id[n][k] = s
            n += 1
            return n - 1

        for context, continuations in group:
            seqs = range(seq, seq + max(len(continuations), 1))
            for pos, token in enumerate(context):
                last = add(token, pos, seqs, pos == len(context) - 1)
            rows = []
            for j, cont in enumerate(continuations):
                rows.append([last] + [add(t, len(context) + i, [seq + j], True) for i, t in enumerate(cont[:-1])])
            rows_of.append(rows)
            seq += len(seqs)
        batch.n_tokens = n
        ctx = self._live_ctx()
        try:
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeFailure("llama_decode failed while scoring a batch")
            self.decoded_tokens += n
            return self._collect(group, rows_of)
        finally:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)

    def _collect(self, group: list[Request], rows_of: list[list[list[int]]]) -> list[list[ChoiceScore]]:
        # row -> (log-probabilities, argmax); a context's last row is shared by all its choices
        logprobs: dict[int, tuple[np.ndarray, int]] = {}
        results = []
        for (_, continuations), rows in zip(group, rows_of):
            scores = []
            for cont, cont_rows in zip(continuations, rows):
                total, greedy = 0.0, True
                for row, token in zip(cont_rows, cont):
                    if row not in logprobs:
                        values = output_logprobs(self._ctx, row, self.n_vocab)
                        logprobs[row] = values, int(values.argmax())
                    values, best = logprobs[row]
                    total += float(values[token])
                    greedy = greedy and best == token
                scores.append(ChoiceScore(total, len(cont), greedy))
            results.append(scores)
        return results
