"""llama.cpp for the build side: reference logits and greedy continuations
(export checks), and quantization. The build side calls these; it never
imports llama_cpp itself."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from .native import native_lock, open_llama

QUANT_TYPES = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
               "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
               "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}


def logits_of(gguf: Path, sequences: Sequence[Sequence[int]], lora: Path | None = None,
              n_threads: int = 2) -> list[np.ndarray]:
    """llama.cpp's logits at every position of each token sequence."""
    n_ctx = max(len(s) for s in sequences) + 8
    llm = open_llama(str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                     verbose=False, n_threads=n_threads, lora_path=str(lora) if lora else None)
    try:
        out = []
        for seq in sequences:
            llm.reset()
            llm.eval(list(seq))
            out.append(np.array(llm.scores[: len(seq)], dtype=np.float64))
        return out
    finally:
        with native_lock:
            llm.close()


def greedy_tokens(gguf: Path, prompts: Sequence[Sequence[int]], max_tokens: int, lora: Path | None = None,
                  n_threads: int = 2) -> list[list[int]]:
    """Greedy continuations, stopping at end-of-generation tokens."""
    llm = open_llama(str(gguf), n_ctx=1024, verbose=False, n_threads=n_threads,
                     lora_path=str(lora) if lora else None)
    try:
        results = []
        for prompt in prompts:
            tokens = []
            for token in llm.generate(list(prompt), temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(tokens) >= max_tokens:
                    break
                tokens.append(token)
            results.append(tokens)
        return results
    finally:
        with native_lock:
            llm.close()


def quantize_file(src: Path, dst: Path, qtype: str, n_threads: int = 0) -> int:
    """``llama_model_quantize`` of ``src`` into ``dst`` as ``qtype`` (a key of
    QUANT_TYPES); llama.cpp's status (0: done). ``bf16`` and ``f16`` also take a
    quantized source: its weights are dequantized and only rounded to 16 bits."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.allow_requantize = qtype in ("bf16", "f16")
    params.nthread = n_threads
    with native_lock:
        return llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
