"""llama.cpp models, shared LoRA adapters, and the pure token generator.

``ModelPool`` loads each distinct GGUF file once (memory-mapped) and owns it;
``LoadedModel`` owns one llama.cpp model + context and the LoRA adapters
initialised on it, and switches adapters per stage through llama.cpp's
adapter API, so N adapter stages over one base cost one model's memory.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .config import Sampling
from .errors import AdapterError, ModelError, RuntimeFailure
from .ggufinfo import GGUFInfo, check_adapter, read_gguf_info
from .prompts import ChatTemplate


def token_text(llm, token: int) -> str:
    """A token's text in ``llm``'s vocabulary ("" for a missing token, id < 0)."""
    return llm._model.token_get_text(token) if token >= 0 else ""


def read_chat_template(llm) -> ChatTemplate | None:
    """The chat template a ``llama_cpp.Llama`` carries in its GGUF, with its BOS
    and EOS texts and whether its tokenizer adds BOS itself; None if it has none."""
    source = llm.metadata.get("tokenizer.chat_template")
    if not source:
        return None
    return ChatTemplate(source, token_text(llm, llm.token_bos()), token_text(llm, llm.token_eos()),
                        tokenizer_adds_bos=bool(llm._model.add_bos_token()))


_AMX_LOCK = threading.Lock()


def amx_in_build(llama_cpp) -> bool:
    """Whether this llama.cpp build has ggml's AMX matmul kernels (a -march=native
    build on a CPU that reports AMX)."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def open_llama(model_path: str, **kwargs):
    """``llama_cpp.Llama(model_path, **kwargs)``, kept off ggml's AMX kernels.

    ggml's AMX matmul dies of SIGILL (``tilezero`` in a worker thread: its tile
    configuration is lost; llama.cpp PR 26954) on Sapphire Rapids machines seen
    here, so where the build has them, the model is loaded without llama.cpp's
    "extra" weight buffers (AMX, and the CPU repacking that comes with them) and
    runs on the plain CPU kernels. ``FSLM_EDGE_AMX=1`` keeps them."""
    import llama_cpp

    if os.environ.get("FSLM_EDGE_AMX") == "1" or not amx_in_build(llama_cpp):
        return llama_cpp.Llama(model_path=model_path, **kwargs)
    module = llama_cpp.llama_cpp
    defaults = module.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _AMX_LOCK:  # Llama() reads its model parameters from this function
        module.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=model_path, **kwargs)
        finally:
            module.llama_model_default_params = defaults


@contextmanager
def quiet_stderr():
    """llama.cpp prints load logs on fd 2; keep them off the user's terminal."""
    if os.environ.get("FSLM_EDGE_VERBOSE"):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LoadedModel:
    """One GGUF model in llama.cpp, its context, and adapters over it."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int, n_batch: int = 512, logits_all: bool = False):
        import llama_cpp

        self._lib = llama_cpp
        self.path = Path(path)
        self.n_ctx = n_ctx
        try:
            with quiet_stderr():
                self.llm = open_llama(
                    str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                    n_batch=min(n_batch, n_ctx), use_mmap=True, verbose=False, logits_all=logits_all,
                )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp could not load {path} ({exc}); the file may be truncated, corrupt "
                             "or of an unsupported architecture") from None
        self._adapters: dict[Path, ctypes.c_void_p] = {}
        self._active: tuple = ()
        self._digit_tokens: np.ndarray | None = None
        self._info: GGUFInfo | None = None
        self.chat_template = read_chat_template(self.llm)

    # -- metadata -----------------------------------------------------------
    @property
    def info(self) -> GGUFInfo:
        if self._info is None:
            self._info = read_gguf_info(self.path)
        return self._info

    # -- tokens ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def tokenize_plain(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.llm._model.vocab, token))

    # -- adapters -----------------------------------------------------------
    def add_adapter(self, path: Path) -> None:
        """Check an adapter against this base and initialise it (once)."""
        path = Path(path).resolve()
        if path in self._adapters:
            return
        check_adapter(path, self.info)
        with quiet_stderr():
            handle = self._lib.llama_adapter_lora_init(self.llm._model.model, str(path).encode("utf-8"))
        if not handle:
            raise AdapterError(f"llama.cpp refused the adapter {path}; export it again for {self.path.name}")
        self._adapters[path] = handle

    def use_adapter(self, path: Path | None, scale: float = 1.0) -> None:
        """Make ``path`` (or no adapter; also at scale 0) active; drops the KV
        cache on a change."""
        key = (Path(path).resolve(), float(scale)) if path is not None and scale != 0 else ()
        if key == self._active:
            return
        ctx = self.llm._ctx.ctx
        if not key:
            status = self._lib.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handles = (self._lib.llama_adapter_lora_p_ctypes * 1)(self._adapters[key[0]])
            scales = (ctypes.c_float * 1)(key[1])
            status = self._lib.llama_set_adapters_lora(ctx, handles, 1, scales)
        if status != 0:
            raise RuntimeFailure(f"llama.cpp could not switch adapters (status {status})")
        self.llm.reset()  # cached keys/values were computed under the old weights
        self._active = key

    # -- generation ---------------------------------------------------------
    def digit_tokens(self) -> np.ndarray:
        """Ids of the tokens whose text starts with a digit (computed once)."""
        if self._digit_tokens is None:
            ids = [t for t in range(self.llm.n_vocab()) if self.llm.detokenize([t])[:1].isdigit()]
            self._digit_tokens = np.array(ids, dtype=np.intc)
        return self._digit_tokens

    def generate(self, prompt_tokens: list[int], sampling: Sampling, cancel: threading.Event | None = None,
                 first_banned: np.ndarray | None = None) -> Iterator[int]:
        """The pure token generator: sampled token ids until EOG or max_tokens.
        ``first_banned``: token ids the first sampled token may not be."""
        if sampling.seed is not None:
            self.llm.set_seed(sampling.seed)
            if sampling.temperature > 0:
                # Decode the whole prompt again: reusing a cached prefix changes the batch shapes, and
                # with them the low bits of the logits on quantized weights, so a seeded draw could differ.
                self.llm.reset()
        produced = 0
        stream = self.llm.generate(
            prompt_tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
            temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty, reset=True,
            logits_processor=None if first_banned is None else self._ban_first(first_banned),
        )
        try:
            for token in stream:
                if cancel is not None and cancel.is_set():
                    return
                if self.is_eog(token):
                    return
                yield token
                produced += 1
                if produced >= sampling.max_tokens:
                    return
        finally:
            stream.close()

    @staticmethod
    def _ban_first(banned: np.ndarray):
        from llama_cpp import LogitsProcessorList

        calls = 0

        def ban(_input_ids, logits):
            nonlocal calls
            calls += 1
            if calls == 1:
                logits[banned] = -np.inf
            return logits

        return LogitsProcessorList([ban])

    def close(self) -> None:
        if getattr(self, "llm", None) is None:
            return
        self._adapters.clear()  # llama.cpp frees adapters together with their model
        self.llm.close()
        self.llm = None


class ModelPool:
    """Loads each distinct model file once and shares it; owns them all."""

    def __init__(self, n_ctx: int, n_threads: int, n_batch: int = 512, logits_all: bool = False):
        self.n_ctx, self.n_threads, self.n_batch = n_ctx, n_threads, n_batch
        self.logits_all = logits_all
        self._models: dict[Path, LoadedModel] = {}

    def get(self, path: Path) -> LoadedModel:
        key = Path(path).resolve()
        model = self._models.get(key)
        if model is None:
            model = LoadedModel(key, self.n_ctx, self.n_threads, self.n_batch, self.logits_all)
            self._models[key] = model
        return model

    @property
    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()
