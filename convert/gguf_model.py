"""Model GGUFs written by the project: from a transformers model, a merged
base + LoRA, and llama.cpp's own quantizer over an F16/F32 file.

All writes go through :class:`convert.gguf_out.GGUFOut` (temp file + rename).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from fslm_edge.errors import InputError, ModelError
from fslm_edge.fileio import AtomicFile, no_space, out_of_space

from .arch import gguf_arch_kv, hf_to_gguf_name, to_gguf_layout
from .gguf_out import GGUFOut
from .gguf_torch import open_gguf, read_kv

FLOAT_TYPES = ("f16", "f32")
QUANT_TYPES = ("q8_0", "q4_k_m", "q4_0")
_SKIP_KV = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def copy_kv(reader, out: GGUFOut, only_prefix: str | None = None) -> None:
    """Copy metadata fields from a GGUF reader (all, or those under a prefix)."""
    import gguf

    for key, fld in reader.fields.items():
        if key.startswith(_SKIP_KV) or (only_prefix and not key.startswith(only_prefix)):
            continue
        value = fld.value.tolist() if isinstance(fld.value, np.ndarray) else fld.value
        sub = gguf.GGUFValueType(fld.sub_type) if fld.sub_type is not None else None
        out.add_kv("add_key_value", key, value, gguf.GGUFValueType(fld.vtype), sub)


def _float_type(ftype: str):
    import gguf

    if ftype not in FLOAT_TYPES:
        raise InputError(f"float type must be one of {', '.join(FLOAT_TYPES)}, not '{ftype}'")
    return gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32


def _cast(name: str, array: np.ndarray, ftype: str) -> np.ndarray:
    if ftype == "f16" and array.ndim >= 2:
        return array.astype(np.float16)
    return array.astype(np.float32)


def write_model(path: Path, arch: str, tensors: Iterable[tuple[str, np.ndarray]], ftype: str,
                kv_reader=None, kv_prefix: str | None = None, extra_kv: Iterable[tuple] = (),
                before_commit: Callable[[Path], None] | None = None) -> Path:
    """A model GGUF from (GGUF name, array) pairs; metadata copied from
    ``kv_reader`` (optionally only keys under ``kv_prefix``) plus ``extra_kv``
    as (writer method, full key or None, value). ``before_commit(tmp)`` runs
    on the complete file before it is renamed into place."""
    file_type = _float_type(ftype)
    with GGUFOut(path, arch) as out:
        if kv_reader is not None:
            copy_kv(kv_reader, out, kv_prefix)
        for method, key, value in extra_kv:
            out.add_kv(method, *((key, value) if key else (value,)))
        out.add_kv("add_file_type", file_type)
        for name, array in tensors:
            out.add_tensor(name, _cast(name, array, ftype))
        return out.commit(before_commit)


def hf_tensors(arch: str, config, state: Mapping[str, object]) -> Iterator[tuple[str, np.ndarray]]:
    """HF-named torch/numpy tensors -> GGUF-named arrays in GGUF layout."""
    for name, value in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        array = value.detach().float().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)
        gname = hf_to_gguf_name(arch, name)
        yield gname, to_gguf_layout(arch, gname, array, config.num_attention_heads, config.num_key_value_heads)


def write_hf_model(path: Path, model, tokenizer_gguf: Path, ftype: str = "f32", name: str = "model",
                   before_commit: Callable[[Path], None] | None = None) -> Path:
    """Write a transformers model as a GGUF, taking the tokenizer (and chat
    template) metadata from another GGUF with the same vocabulary."""
    from .arch import ARCHS

    arch = next((a for a, spec in ARCHS.items() if spec.hf_class == type(model).__name__), None)
    if arch is None:
        raise ModelError(f"cannot write a {type(model).__name__} as GGUF (supported: llama, gemma3)")
    config = model.config
    extra = [("add_name", None, name)] + [(m, f"{arch}.{k}", v) for m, k, v in gguf_arch_kv(arch, config)]
    reader = open_gguf(tokenizer_gguf)
    return write_model(Path(path), arch, hf_tensors(arch, config, model.state_dict()), ftype,
                       kv_reader=reader, kv_prefix="tokenizer.", extra_kv=extra, before_commit=before_commit)


def merged_tensors(reader, lora: Mapping[str, tuple[np.ndarray, np.ndarray]], scale_of) -> Iterator:
    """Base tensors dequantized, with ``scale * B @ A`` added where the LoRA has them."""
    for tensor in reader.tensors:
        array = reader.dequantize(tensor)
        pair = lora.get(tensor.name)
        if pair is not None:
            a, b = pair
            array = array + scale_of(a) * (b.astype(np.float32) @ a.astype(np.float32))
        yield tensor.name, array


def merge_to_gguf(base: Path, lora: Mapping[str, tuple[np.ndarray, np.ndarray]], alpha: float,
                  out: Path, ftype: str = "f16", adapter_scale: float = 1.0,
                  before_commit: Callable[[Path], None] | None = None) -> Path:
    """Base GGUF + LoRA pairs (GGUF layout) -> an F16/F32 GGUF with the base's metadata."""
    reader = open_gguf(base)
    arch = str(read_kv(reader).get("general.architecture"))
    names = {t.name for t in reader.tensors}
    for name in lora:
        if name not in names:
            raise ModelError(f"the adapter changes {name}, which base {Path(base).name} does not have")
    return write_model(Path(out), arch, merged_tensors(reader, lora, lambda a: adapter_scale * alpha / a.shape[0]),
                       ftype, kv_reader=reader, before_commit=before_commit)


def quantize_gguf(src: Path, dst: Path, qtype: str, n_threads: int = 0,
                  before_commit: Callable[[Path], None] | None = None) -> Path:
    """Quantize with llama.cpp's ``llama_model_quantize`` (temp file + rename).
    ``bf16`` and ``f16`` also take a quantized source: its weights are
    dequantized and only rounded to 16 bits (a fast copy for batch scoring)."""
    from fslm_edge.engine.tools import QUANT_TYPES, quantize_file

    if qtype not in QUANT_TYPES:
        raise InputError(f"quantization must be one of {', '.join(QUANT_TYPES)}, not '{qtype}'")
    out = AtomicFile(dst)
    try:
        status = quantize_file(src, out.tmp, qtype, n_threads)
        if status != 0:
            # llama.cpp says only "status 1": a full disk is told apart by trying to grow the file
            if out.tmp.is_file() and out_of_space(out.tmp):
                raise no_space(out.target)
            raise ModelError(f"llama.cpp could not quantize {src} to {qtype} (status {status}); "
                             "run with --debug to see llama.cpp's log")
        return out.commit(before_commit)
    finally:
        if not out.done:
            out.discard()
