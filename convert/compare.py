"""Torch vs llama.cpp agreement: next-token argmax agreement and mean KL
divergence over the positions of token sequences (tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Agreement:
    positions: int
    agreement: float  # fraction of positions with the same argmax token
    mean_kl: float  # KL(torch || llama.cpp), nats per position
    max_abs_logit_diff: float


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Agreement:
    same, kl, count, diff = 0, 0.0, 0, 0.0
    for ref, cand in zip(reference, candidate):
        ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
        same += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        lp, lq = _log_softmax(ref), _log_softmax(cand)
        kl += float((np.exp(lp) * (lp - lq)).sum())
        count += len(ref)
        diff = max(diff, float(np.abs(ref - cand).max()))
    return Agreement(count, same / max(1, count), kl / max(1, count), diff)


def torch_logits(model, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for seq in sequences:
            out.append(model(input_ids=torch.tensor([list(seq)]), use_cache=False).logits[0].double().numpy())
    return out


def llama_cpp_logits(gguf: Path, sequences: Sequence[Sequence[int]], lora: Path | None = None,
                     n_threads: int = 2) -> list[np.ndarray]:
    from fslm_edge.engine.tools import logits_of

    return logits_of(gguf, sequences, lora, n_threads)


def greedy(gguf: Path, prompts: Sequence[Sequence[int]], max_tokens: int, lora: Path | None = None,
           n_threads: int = 2) -> list[list[int]]:
    """Greedy continuations (llama.cpp), stopping at end-of-generation tokens."""
    from fslm_edge.engine.tools import greedy_tokens

    return greedy_tokens(gguf, prompts, max_tokens, lora, n_threads)
