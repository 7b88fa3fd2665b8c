"""Read what a GGUF file is (architecture, quantization, tensor shapes) and
check LoRA adapters against their base before llama.cpp applies them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import AdapterError, ModelError
from .models import check_gguf_file


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]  # ggml order: ne[0] is the row length
    dtype: str
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    file_size: int
    kind: str  # "model" or "adapter"
    architecture: str
    name: str
    file_type: str
    n_params: int
    context_length: int | None
    n_layers: int | None
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    lora_alpha: float | None
    tensors: dict[str, TensorInfo] = field(repr=False, default_factory=dict)


@lru_cache(maxsize=32)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFInfo:
    import gguf

    from .ggufread import GGUFFile

    file = Path(path)
    check_gguf_file(file)
    reader = GGUFFile(file)  # ModelError on a corrupt or truncated file
    tensors = {t.name: TensorInfo(tuple(int(x) for x in t.shape), t.tensor_type.name, t.n_bytes)
               for t in reader.tensors}
    n_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    arch = reader.get("general.architecture") or "unknown"
    file_type = reader.get("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "?"
    except ValueError:
        ftype_name = str(file_type)
    alpha = reader.get("adapter.lora.alpha")
    return GGUFInfo(
        path=file,
        file_size=size,
        kind=str(reader.get("general.type") or "model"),
        architecture=str(arch),
        name=str(reader.get("general.name") or file.stem),
        file_type=ftype_name,
        n_params=n_params,
        context_length=reader.get(f"{arch}.context_length"),
        n_layers=reader.get(f"{arch}.block_count"),
        n_embd=reader.get(f"{arch}.embedding_length"),
        n_head=reader.get(f"{arch}.attention.head_count"),
        n_head_kv=reader.get(f"{arch}.attention.head_count_kv"),
        lora_alpha=float(alpha) if alpha is not None else None,
        tensors=tensors,
    )


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Metadata and tensor shapes of a GGUF file (cached per file version)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size)


def check_adapter(adapter_path: Path, base: GGUFInfo) -> GGUFInfo:
    """Refuse a LoRA GGUF that was not made for ``base``; return its info."""
    if not Path(adapter_path).is_file():
        raise AdapterError(
            f"adapter file not found: {adapter_path}; build it with: fslm-edge build STACK --data-dir DIR")
    try:
        info = read_gguf_info(adapter_path)
    except ModelError as exc:
        raise AdapterError(str(exc)) from None
    if info.kind != "adapter":
        raise AdapterError(f"{adapter_path} is a GGUF model, not a LoRA adapter (general.type = '{info.kind}'); "
                           "use it as the stage's model = ... instead")
    if info.architecture != base.architecture:
        raise AdapterError(f"adapter {adapter_path.name} is for a '{info.architecture}' model but the base "
                           f"{base.path.name} is '{base.architecture}'; build the adapter for this base")
    for name, lora_a in info.tensors.items():
        if not name.endswith(".lora_a"):
            continue
        weight = name[: -len(".lora_a")]
        lora_b = info.tensors.get(weight + ".lora_b")
        target = base.tensors.get(weight)
        if lora_b is None or target is None:
            missing = weight + (".lora_b" if lora_b is None else " in the base model")
            raise AdapterError(f"adapter {adapter_path.name} does not fit base {base.path.name}: no {missing}")
        # ggml shapes: base [n_in, n_out], lora_a [n_in, r], lora_b [r, n_out]
        if lora_a.shape[0] != target.shape[0] or lora_b.shape[-1] != target.shape[-1] \
                or lora_a.shape[1] != lora_b.shape[0]:
            raise AdapterError(
                f"adapter {adapter_path.name} does not fit base {base.path.name}: {weight} is "
                f"{list(target.shape)} in the base but the adapter has A {list(lora_a.shape)}, B {list(lora_b.shape)}; "
                "it was made for another base model"
            )
    return info
