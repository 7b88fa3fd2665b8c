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

Why the choices are decoded one after another on one sequence, not in one
decode on several sequences (llama-cpp-python 0.3.36, measured on ARC-Easy):
with a unified KV cache (``kv_unified``, the context shared through
``llama_memory_seq_cp``) a multi-token decode on a sequence s > 0 gives other
log-likelihoods whenever another sequence's cells beyond the shared context
are in the cache (up to 0.26 nats on 12 questions; llama.cpp issue 24962
reports the same). With one KV stream per sequence the log-likelihoods are
exact, but copying the context into each stream costs what batching saves
(5.6 questions/s against 5.3 for this scorer, 100 questions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ContextOverflowError, RuntimeFailure


@dataclass(frozen=True)
class ChoiceScore:
    logprob: float  # sum of the continuation tokens' log-probabilities
    n_tokens: int
    greedy: bool  # every continuation token was the argmax


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64, copy=False)
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def split_continuation(model, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context tokens and continuation tokens, tokenized together (lm-eval style):
    trailing spaces of the context move to the continuation, and the
    continuation is ``tokenize(context + continuation)[len(tokenize(context)):]``."""
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    context_tokens = model.tokenize(stripped)
    cont = model.tokenize(stripped + continuation)[len(context_tokens):]
    if not cont:
        cont = model.tokenize_plain(continuation)
    return context_tokens, cont


class ChoiceScorer:
    """Scores continuations after a context on one ``LoadedModel`` (seq 0)."""

    def __init__(self, model):
        import llama_cpp

        self._lib = llama_cpp
        self.model = model
        self.llm = model.llm
        self.n_vocab = self.llm.n_vocab()
        self.n_batch = self.llm.n_batch
        self.decoded_tokens = 0  # tokens actually run through the model (for speed reports)

    # -- cache bookkeeping ----------------------------------------------------
    def _cached(self) -> list[int]:
        return list(self.llm.input_ids[: self.llm.n_tokens])

    def _set_cached(self, tokens: Sequence[int]) -> None:
        n = len(tokens)
        self.llm.input_ids[:n] = tokens
        self.llm.n_tokens = n
        self.llm._requires_eval = True  # Llama must decode again before sampling

    def _rewind(self, n: int) -> None:
        self.llm._ctx.kv_cache_seq_rm(0, n, -1)

    def _decode(self, tokens: Sequence[int], start: int, logits: str) -> list[np.ndarray]:
        """Decode ``tokens`` at positions ``start..``; return log-softmax rows for
        the last token (``logits='last'``) or every token (``'all'``)."""
        rows: list[np.ndarray] = []
        batch = self.llm._batch.batch
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
            status = self._lib.llama_decode(self.llm._ctx.ctx, batch)
            if status != 0:
                raise RuntimeFailure(f"llama_decode returned {status} while scoring")
            self.decoded_tokens += len(chunk)
            wanted = range(len(chunk)) if logits == "all" else ([len(chunk) - 1] if last_chunk else [])
            for i in wanted:
                pointer = self._lib.llama_get_logits_ith(self.llm._ctx.ctx, i)
                rows.append(log_softmax(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))))
        return rows

    # -- scoring ---------------------------------------------------------------
    def score(self, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[ChoiceScore]:
        """Log-likelihood of each continuation after ``context`` (token ids)."""
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
