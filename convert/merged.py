"""Every stage on a model file of its own, adapters merged in: what
``fslm-edge serve --merge-adapters [--merge-type TYPE]`` serves.

A stage under a LoRA adapter computes the adapter's product on every token,
and llama.cpp sets an adapter per context, so one batched decode holds only
the requests at stages under one adapter (engine/batch.py). With each stage's
adapter merged into a file of its own there is no adapter work per token,
and every file gets its own decoder (``--parallel``) or context
(``--workers``). Q8_0, the default, because on CPUs without fast many-row
kernels (the 2-core AVX-512 machine here) a lone Q8_0 decode is the fastest
that keeps the adapters' answers (274 of 300 the same printed answer;
docs/server.md, "Merged files"); Q4_0 decodes faster still but changes many
answers; BF16 because where the CPU has fast BF16 matmuls a many-row decode
costs little more than one (``--parallel``). A stage without an adapter
runs on a copy of its model of the same type. The files are made once per
(model, adapter, scale, type) and cached; numpy and llama.cpp's quantizer
only, no torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fslm_edge.config import StackConfig
from fslm_edge.errors import InputError
from fslm_edge.fileio import fingerprint, sha256_file
from fslm_edge.models import cache_dir, resolve_model

MERGE_TYPES = ("q8_0", "q4_0", "bf16")  # what --merge-adapters writes; the first is the default


def merged_folder() -> Path:
    return cache_dir() / "merged"


def merged_file(base: Path, adapter: Path | None, scale: float, folder: Path | None = None, log=None,
                 qtype: str = MERGE_TYPES[0]) -> Path:
    """``base`` with ``adapter`` (at ``scale``) merged in, as ``qtype`` (``MERGE_TYPES``);
    made unless cached."""
    from .export import load_lora, manifest_first
    from .gguf_model import merge_to_gguf, quantize_gguf

    if qtype not in MERGE_TYPES:
        raise InputError(f"--merge-type must be one of {', '.join(MERGE_TYPES)}, not '{qtype}'")
    folder = Path(folder) if folder is not None else merged_folder()
    base_sha = sha256_file(base)
    adapter_sha = sha256_file(adapter) if adapter else ""
    key = fingerprint(base_sha, adapter_sha, repr(float(scale)))
    name = f"{base.stem}+{adapter.stem}" if adapter else base.stem
    out = folder / f"{name}-{key[:12]}.{qtype}.gguf"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    if log is not None:
        log(f"fslm-edge: writing {out.name} ({base.name}" + (f" + {adapter.name}" if adapter else "")
            + f", {qtype.upper()})")
    info = {"kind": f"merged-{qtype}", "base": {"file": base.name, "sha256": base_sha},
            "adapter": {"file": adapter.name, "sha256": adapter_sha} if adapter else None,
            "adapter_scale": scale}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".merge-") as tmp:
        if adapter is None and qtype == "bf16":
            source = base  # llama.cpp dequantizes a quantized base to 16 bits itself
        elif adapter is None:  # llama.cpp requantizes only from float weights
            source = quantize_gguf(base, Path(tmp) / "base-f16.gguf", "f16")
        else:
            lora = load_lora(adapter, base)
            source = merge_to_gguf(base, lora.tensors, lora.alpha, Path(tmp) / "merged-f16.gguf", "f16",
                                   adapter_scale=scale)
        return quantize_gguf(source, out, qtype, before_commit=manifest_first(out, info))


def merged_overrides(config: StackConfig, folder: Path | None = None, log=None,
                     qtype: str = MERGE_TYPES[0]) -> dict[str, object]:
    """``--set`` overrides that put every stage on its merged ``qtype`` file, adapter cleared."""
    overrides: dict[str, object] = {}
    for stage in config.stages:
        base = resolve_model(stage.model, config.base_dir)
        adapter = stage.adapter if stage.adapter is not None and stage.adapter_scale != 0 else None
        path = merged_file(base, adapter, stage.adapter_scale if adapter else 0.0, folder, log, qtype)
        overrides[f"{stage.name}.model"] = str(path)
        overrides[f"{stage.name}.adapter"] = ""
    return overrides
