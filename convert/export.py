"""PEFT LoRA adapter folder -> llama.cpp LoRA GGUF, merged model, manifests.

Any PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``)
is accepted. Per-module ranks/alphas and rsLoRA scaling are folded into B so
that llama.cpp's single ``adapter.lora.alpha`` reproduces PEFT's scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from fslm_edge.errors import AdapterError, InputError
from fslm_edge.fileio import parse_json_text, sha256_file, write_json

from .arch import hf_to_gguf_name, to_gguf_layout
from .gguf_out import write_lora_gguf
from .gguf_torch import open_gguf, read_kv


@dataclass(frozen=True)
class GGUFLora:
    """A LoRA in GGUF layout: base tensor name -> (A[r, n_in], B[n_out, r])."""

    arch: str
    alpha: float
    tensors: dict


def _peft_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise InputError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    try:
        config = parse_json_text(path.read_bytes())
    except ValueError as exc:
        raise InputError(f"{path}: {exc}; re-save the adapter with save_pretrained") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: must be a JSON object; re-save the adapter with save_pretrained")
    if config.get("peft_type", "LORA") != "LORA":
        raise InputError(f"{folder}: only LoRA adapters can be exported, not {config.get('peft_type')}")
    if config.get("use_dora"):
        raise InputError(f"{folder}: DoRA adapters have no llama.cpp equivalent; train with use_dora = false")
    if config.get("modules_to_save"):
        raise InputError(f"{folder}: modules_to_save {config['modules_to_save']} are full weights, not LoRA; "
                         "merge them instead (fslm-edge merge)")
    return config


def _module_scale(config: dict, module: str, rank: int) -> float:
    """PEFT's scale for one module (its alpha/rank, or alpha/sqrt(rank) with rsLoRA)."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module.endswith(pattern):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_peft_adapter(folder: Path, arch: str, n_head: int, n_head_kv: int) -> GGUFLora:
    from safetensors.numpy import load_file

    folder = Path(folder)
    config = _peft_config(folder)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{folder}: no adapter_model.safetensors (save the adapter with safe_serialization)")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise InputError(f"{weights} is unreadable ({exc}); re-save the adapter") from None
    alpha = float(config.get("lora_alpha", 8))
    tensors = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = state.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise InputError(f"{folder}: {key} has no matching lora_B")
        rank = a.shape[0]
        name = hf_to_gguf_name(arch, module.removeprefix("base_model.model.") + ".weight")
        # llama.cpp scales by alpha / rank: fold any difference into B
        fold = _module_scale(config, module, rank) / (alpha / rank)
        b = to_gguf_layout(arch, name, b.astype(np.float32) * fold, n_head, n_head_kv)
        tensors[name] = (a.astype(np.float32), b)
    if not tensors:
        raise InputError(f"{folder}: the adapter has no LoRA tensors")
    return GGUFLora(arch, alpha, tensors)


def base_layout(base_gguf: Path) -> tuple[str, int, int]:
    kv = read_kv(open_gguf(base_gguf))
    arch = str(kv.get("general.architecture"))
    n_head = int(kv.get(f"{arch}.attention.head_count", 0))
    return arch, n_head, int(kv.get(f"{arch}.attention.head_count_kv", n_head))


def export_lora(adapter_dir: Path, base_gguf: Path, out: Path, name: str | None = None,
                before_commit: Callable[[Path], None] | None = None) -> Path:
    """Write a PEFT adapter as a LoRA GGUF for ``base_gguf``, checked to fit
    before it is renamed into place (then ``before_commit(tmp)`` runs)."""
    from fslm_edge.ggufinfo import check_adapter, read_gguf_info

    arch, n_head, n_kv = base_layout(base_gguf)
    lora = read_peft_adapter(adapter_dir, arch, n_head, n_kv)
    out = Path(out)

    def check_then(tmp: Path) -> None:
        try:
            check_adapter(tmp, read_gguf_info(base_gguf))
        except AdapterError as exc:
            raise AdapterError(str(exc).replace(tmp.name, out.name)) from None
        if before_commit is not None:
            before_commit(tmp)

    return write_lora_gguf(out, arch, lora.alpha, lora.tensors, name=name or out.stem, before_commit=check_then)


def read_gguf_lora(path: Path) -> GGUFLora:
    """A LoRA GGUF back into (A, B) pairs (for merging adapters trained elsewhere)."""
    reader = open_gguf(path)
    kv = read_kv(reader)
    if kv.get("general.type") != "adapter":
        raise AdapterError(f"{path} is not a LoRA adapter GGUF")
    arrays = {t.name: reader.dequantize(t) for t in reader.tensors}
    tensors = {n[: -len(".lora_a")]: (arrays[n], arrays[n[: -len(".lora_a")] + ".lora_b"])
               for n in arrays if n.endswith(".lora_a")}
    return GGUFLora(str(kv.get("general.architecture")), float(kv.get("adapter.lora.alpha", 0) or 0), tensors)


def load_lora(adapter: Path, base_gguf: Path) -> GGUFLora:
    """A PEFT folder or a LoRA GGUF, in the base's GGUF layout."""
    adapter = Path(adapter)
    if adapter.is_dir():
        arch, n_head, n_kv = base_layout(base_gguf)
        return read_peft_adapter(adapter, arch, n_head, n_kv)
    lora = read_gguf_lora(adapter)
    if not lora.alpha:
        rank = next(iter(lora.tensors.values()))[0].shape[0]
        lora = GGUFLora(lora.arch, float(rank), lora.tensors)  # llama.cpp: no alpha means scale 1
    return lora


def tool_version() -> str:
    try:
        return metadata.version("fslm-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def manifest_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")


def write_manifest(artifact: Path, info: dict, sha256: str | None = None) -> Path:
    """``<artifact>.manifest.json`` beside the artifact, written atomically.
    ``sha256`` is the artifact's (hashed from the file when not given)."""
    artifact = Path(artifact)
    if sha256 is None and artifact.is_file():
        sha256 = sha256_file(artifact)
    body = {"artifact": artifact.name, "sha256": sha256, "tool": "fslm-edge", "tool_version": tool_version(),
            **info}
    return write_json(manifest_path(artifact), body)


def manifest_first(artifact: Path, info: dict | Callable[[], dict]) -> Callable[[Path], None]:
    """A ``before_commit`` hook: the manifest of ``artifact`` is written from
    its complete temp file before the artifact is renamed into place, so an
    artifact never exists without its manifest (a kill between the two
    renames leaves the old artifact, if any, beside the new manifest, whose
    sha256 then tells them apart)."""
    def write(tmp: Path) -> None:
        write_manifest(artifact, info() if callable(info) else info, sha256=sha256_file(tmp))

    return write
