"""One GGUF model in llama.cpp: its context, adapters, tokens and KV cache.

``LoadedModel`` owns the llama.cpp model and context and the LoRA adapters
initialised on it (freed with the model), and switches adapters per stage
through llama.cpp's adapter API, so N adapter stages over one base cost one
model's memory. Children are closed before their parent (``close``); using a
closed model is a clear error. ``ModelPool`` loads each distinct file once.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from ..config import Sampling
from ..errors import AdapterError, ContextOverflowError, ModelError, RuntimeFailure
from ..ggufinfo import GGUFInfo, check_adapter, read_gguf_info
from ..models import resolve_model
from ..prompts import ChatTemplate, Prompt
from .native import backend_info, native_lock, open_llama

# Token attributes (llama.h, enum llama_token_attr) of tokens that only trusted text may produce.
_CONTROL_ATTRS = 1 << 3 | 1 << 4  # CONTROL | USER_DEFINED


class ClosedModelError(RuntimeFailure):
    """A model was used after ``close()``."""


class LoadedModel:
    """One GGUF model in llama.cpp, its context, and adapters over it."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int, n_batch: int = 512, logits_all: bool = False,
                 gpu_layers: int = 0, vocab_only: bool = False):
        self.path = Path(path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.gpu_layers = gpu_layers
        # Every load checks the header first (regular file, sizes, values llama.cpp would abort on),
        # also when the path did not come through resolve_model.
        resolve_model(str(self.path))
        try:
            self._llm = open_llama(
                str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                n_batch=min(n_batch, n_ctx), use_mmap=True, verbose=False, logits_all=logits_all,
                n_gpu_layers=gpu_layers, vocab_only=vocab_only,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp could not load {path} ({exc}); the file may be truncated, corrupt "
                             "or of an unsupported architecture") from None
        self._adapters: dict[Path, ctypes.c_void_p] = {}
        self._active: tuple = ()
        self._digit_tokens: np.ndarray | None = None
        self._special_texts: list[tuple[str, int]] | None = None
        self._special_starts: set[str] = set()
        self._info: GGUFInfo | None = None
        self._children: list = []  # scorers and other contexts on this model, closed first
        self.decoder = None  # a BatchedDecoder of the same file: generation goes through it (shared by loads)
        self.chat_template = self._read_chat_template()

    # -- life cycle -----------------------------------------------------------
    @property
    def llm(self) -> llama_cpp.Llama:
        if self._llm is None:
            raise ClosedModelError(f"the model {self.path.name} was closed; load the stack again")
        return self._llm

    @property
    def closed(self) -> bool:
        return self._llm is None

    def own(self, child):
        """Tie ``child`` (anything with ``close()``, e.g. a batch scorer) to this
        model: it is closed before the model is."""
        self._children.append(child)
        return child

    def close(self) -> None:
        if self._llm is None:
            return
        for child in reversed(self._children):
            child.close()
        self._children.clear()
        self._adapters.clear()  # llama.cpp frees adapters together with their model
        with native_lock:
            self._llm.close()
        self._llm = None

    # -- metadata -------------------------------------------------------------
    @property
    def info(self) -> GGUFInfo:
        if self._info is None:
            self._info = read_gguf_info(self.path)
        return self._info

    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    def token_text(self, token: int) -> str:
        """A token's text in the vocabulary ("" for a missing token, id < 0)."""
        return self.llm._model.token_get_text(token) if token >= 0 else ""

    def _read_chat_template(self) -> ChatTemplate | None:
        source = self.llm.metadata.get("tokenizer.chat_template")
        if not source:
            return None
        return ChatTemplate(source, self.token_text(self.llm.token_bos()), self.token_text(self.llm.token_eos()),
                            tokenizer_adds_bos=bool(self.llm._model.add_bos_token()))

    def end_of_turn_token(self) -> int:
        """The token that ends an assistant turn: EOT when the chat template
        closes turns with it rather than with EOS."""
        eos, eot = self.llm.token_eos(), self.llm._model.token_eot()
        chat = self.chat_template
        if chat and eot >= 0 and eos >= 0 and chat.eos_token not in chat.source:
            if self.token_text(eot) in chat.source:
                return eot
        return eos

    # -- tokens ---------------------------------------------------------------
    def tokenize_prompt(self, prompt: Prompt | str) -> list[int]:
        """A prompt's token ids, BOS added as the model's tokenizer does. Special
        tokens are parsed only in the prompt's trusted parts; in a question or a
        stage's output, ``<|im_end|>`` is plain text. The text is cut only at
        special tokens, where llama.cpp's own tokenizer cuts it too, so a prompt
        without special-token text in untrusted parts gets exactly the ids of
        tokenizing it whole."""
        if isinstance(prompt, str):
            prompt = Prompt.trusted(prompt)
        ids = self.llm.tokenize(b"", add_bos=True, special=False)
        plain: list[str] = []
        for text, trusted in prompt.parts:
            if not trusted:
                plain.append(text)
                continue
            for piece, special in self._split_special(text):
                if special is None:
                    plain.append(piece)
                    continue
                if plain:
                    ids += self.tokenize_plain("".join(plain))
                    plain = []
                ids.append(special)
        if plain:
            ids += self.tokenize_plain("".join(plain))
        return ids

    def tokenize(self, text: Prompt | str) -> list[int]:
        """A prompt, or trusted text (a template's own): special tokens parsed, BOS added."""
        return self.tokenize_prompt(text)

    def tokenize_plain(self, text: str) -> list[int]:
        """Untrusted text: special-token text stays text; no BOS."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return self.llm.detokenize([token])

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def _split_special(self, text: str) -> Iterator[tuple[str, int | None]]:
        """``text`` cut into plain pieces and special tokens (longest match first)."""
        specials = self._specials()
        pos = start = 0
        while pos < len(text):
            found = None
            if text[pos] in self._special_starts:
                for special, token in specials:
                    if text.startswith(special, pos):
                        found = (special, token)
                        break
            if found is None:
                pos += 1
                continue
            if pos > start:
                yield text[start:pos], None
            yield found[0], found[1]
            pos += len(found[0])
            start = pos
        if start < len(text):
            yield text[start:], None

    def _specials(self) -> list[tuple[str, int]]:
        """The texts of the vocabulary's control and user-defined tokens, longest first."""
        if self._special_texts is None:
            vocab = self.llm._model.vocab
            found = []
            for token in range(self.n_vocab):
                if llama_cpp.llama_vocab_get_attr(vocab, token) & _CONTROL_ATTRS:
                    text = self.token_text(token)
                    if text:
                        found.append((text, token))
            found.sort(key=lambda item: -len(item[0]))
            self._special_texts = found
            self._special_starts = {text[0] for text, _ in found}
        return self._special_texts

    def digit_tokens(self) -> np.ndarray:
        """Ids of the tokens whose text starts with a digit (computed once)."""
        if self._digit_tokens is None:
            ids = [t for t in range(self.n_vocab) if self.llm.detokenize([t])[:1].isdigit()]
            self._digit_tokens = np.array(ids, dtype=np.intc)
        return self._digit_tokens

    # -- adapters -------------------------------------------------------------
    def add_adapter(self, path: Path) -> None:
        """Check an adapter against this base and initialise it (once)."""
        path = Path(path).resolve()
        if path in self._adapters:
            return
        check_adapter(path, self.info)
        with native_lock:
            handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(path).encode("utf-8"))
        if not handle:
            raise AdapterError(f"llama.cpp refused the adapter {path}; export it again for {self.path.name}")
        self._adapters[path] = handle

    def adapter_handle(self, path: Path):
        """The llama.cpp handle of an adapter ``add_adapter`` initialised."""
        return self._adapters[Path(path).resolve()]

    def use_adapter(self, path: Path | None, scale: float = 1.0) -> None:
        """Make ``path`` (or no adapter; also at scale 0) active; drops the KV
        cache on a change."""
        if not math.isfinite(scale):
            raise AdapterError(f"adapter_scale {scale} is not a finite number")
        key = (Path(path).resolve(), float(scale)) if path is not None and scale != 0 else ()
        if key == self._active:
            return
        ctx = self.llm._ctx.ctx
        if not key:
            status = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[key[0]])
            scales = (ctypes.c_float * 1)(key[1])
            status = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales)
        if status != 0:
            raise RuntimeFailure(f"llama.cpp could not switch adapters (status {status})")
        self.llm.reset()  # cached keys/values were computed under the old weights
        self._active = key

    # -- KV cache -------------------------------------------------------------
    def reset(self) -> None:
        """Forget the KV cache (the next prompt is decoded from scratch)."""
        self.llm.reset()

    def cached_tokens(self) -> list[int]:
        return list(self.llm.input_ids[: self.llm.n_tokens])

    def set_cached_tokens(self, tokens: Sequence[int]) -> None:
        """Record what the KV cache holds after decoding outside ``generate``."""
        n = len(tokens)
        self.llm.input_ids[:n] = tokens
        self.llm.n_tokens = n
        self.llm._requires_eval = True  # Llama must decode again before sampling

    def rewind(self, n: int) -> None:
        """Drop every cached position from ``n`` on (sequence 0)."""
        self.llm._ctx.kv_cache_seq_rm(0, n, -1)

    # -- raw decoding (for scorers) -------------------------------------------
    @property
    def context_handle(self):
        return self.llm._ctx.ctx

    @property
    def model_handle(self):
        return self.llm._model.model

    @property
    def batch_handle(self):
        return self.llm._batch.batch

    @property
    def vocab_handle(self):
        return self.llm._model.vocab

    @property
    def n_batch(self) -> int:
        return self.llm.n_batch

    def exclusive(self, work):
        """Run ``work()``, native work on this load's own context (scoring):
        with a ``decoder`` attached, on its scheduler thread between two of its
        decodes, so the two contexts never compute at once; else here."""
        return work() if self.decoder is None else self.decoder.run_between_steps(work)

    # -- generation -----------------------------------------------------------
    def generate(self, prompt_tokens: list[int], sampling: Sampling, cancel: threading.Event | None = None,
                 first_banned: np.ndarray | None = None, grammar: str | None = None) -> Iterator[int]:
        """Sampled token ids until EOG, cancel or ``max_tokens``. ``first_banned``:
        token ids the first sampled token may not be; ``grammar``: GBNF the
        tokens must follow (llama.cpp's grammar sampler). The generation loop
        (``generate.stream_text``) is the only caller. With a ``decoder``
        attached, the tokens come from its batch, under this model's adapter."""
        llm = self.llm
        if self.decoder is not None:
            yield from self.decoder.generate(prompt_tokens, sampling, cancel, first_banned, grammar, self._active)
            return
        if len(prompt_tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt needs {len(prompt_tokens)} tokens, more than the context size {self.n_ctx}; "
                "shorten the input or raise context_size", prompt_tokens=len(prompt_tokens), context_size=self.n_ctx)
        if sampling.seed is not None:
            llm.set_seed(sampling.seed)
            if sampling.temperature > 0:
                # Decode the whole prompt again: reusing a cached prefix changes the batch shapes, and
                # with them the low bits of the logits on quantized weights, so a seeded draw could differ.
                llm.reset()
        produced = 0
        stream = llm.generate(
            prompt_tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
            temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty, reset=True,
            logits_processor=None if first_banned is None else _ban_first(first_banned),
            grammar=None if grammar is None else llama_cpp.LlamaGrammar.from_string(grammar, verbose=False),
        )
        try:
            for token in stream:
                if cancel is not None and cancel.is_set():
                    return
                if self.is_eog(token):
                    return
                yield token
                produced += 1
                if produced >= sampling.max_tokens or len(prompt_tokens) + produced >= self.n_ctx:
                    return
        except RuntimeError as exc:  # llama_decode failed (llama-cpp-python raises RuntimeError)
            raise RuntimeFailure(f"llama.cpp could not decode on {self.path.name} ({exc})") from None
        finally:
            stream.close()


def _ban_first(banned: np.ndarray):
    calls = 0

    def ban(_input_ids, logits):
        nonlocal calls
        calls += 1
        if calls == 1:
            logits[banned] = -np.inf
        return logits

    return llama_cpp.LogitsProcessorList([ban])


class ModelPool:
    """Loads each distinct model file once and shares it; owns them all."""

    def __init__(self, n_ctx: int, n_threads: int, n_batch: int = 512, logits_all: bool = False,
                 gpu_layers: int = 0, decoders=None):
        self.n_ctx, self.n_threads, self.n_batch = n_ctx, n_threads, n_batch
        self.decoders = decoders  # a batch.DecoderPool: generation on each file goes through its decoder
        self.logits_all = logits_all
        self.gpu_layers = gpu_layers
        self._models: dict[Path, LoadedModel] = {}
        if gpu_layers and not backend_info().gpu_offload:
            import warnings

            warnings.warn(f"gpu_layers = {gpu_layers} asked for, but this llama.cpp build has no GPU backend "
                          "(CPU only); running on the CPU. Reinstall llama-cpp-python with CMAKE_ARGS "
                          "(README, 'GPU offload').", GPUUnavailableWarning, stacklevel=3)
            self.gpu_layers = 0

    def get(self, path: Path) -> LoadedModel:
        key = Path(path).resolve()
        model = self._models.get(key)
        if model is None:
            model = LoadedModel(key, self.n_ctx, self.n_threads, self.n_batch, self.logits_all, self.gpu_layers)
            self._models[key] = model
            if self.decoders is not None:
                model.decoder = self.decoders.get(key)
        return model

    @property
    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()


class GPUUnavailableWarning(UserWarning):
    """GPU layers were asked for on a build of llama.cpp without a GPU backend."""
