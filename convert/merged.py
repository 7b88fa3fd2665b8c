"""Every stage on a BF16 model file of its own, adapters merged in: what
``fslm-edge serve --parallel N --merge-adapters`` serves.

llama.cpp sets a LoRA adapter per context, so one batched decode holds only
the requests at stages under one adapter (engine/batch.py). With each
stage's adapter merged into a model file of its own, every such file gets its
own batched decoder, on its own scheduler thread, and the decoders of two
stages compute at once on two cores. BF16 because its many-row matmuls are
what makes a batched decode pay on a CPU (docs/server.md). A stage without an
adapter runs on a BF16 copy of its model. The files are made once per
(model, adapter, scale) and cached; numpy and llama.cpp's quantizer only, no
torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fslm_edge.config import StackConfig
from fslm_edge.fileio import fingerprint, sha256_file
from fslm_edge.models import cache_dir, resolve_model


def merged_folder() -> Path:
    return cache_dir() / "merged"


def merged_file(base: Path, adapter: Path | None, scale: float, folder: Path | None = None, log=None) -> Path:
    """``base`` with ``adapter`` (at ``scale``) merged in, as BF16; made unless cached."""
    from .export import load_lora, manifest_first
    from .gguf_model import merge_to_gguf, quantize_gguf

    folder = Path(folder) if folder is not None else merged_folder()
    key = fingerprint(sha256_file(base), sha256_file(adapter) if adapter else "", repr(float(scale)))
    name = f"{base.stem}+{adapter.stem}" if adapter else base.stem
    out = folder / f"{name}-{key[:12]}.bf16.gguf"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    if log is not None:
        log(f"fslm-edge: writing {out.name} ({base.name}" + (f" + {adapter.name}" if adapter else "") + ", BF16)")
    info = {"kind": "merged-bf16", "base": {"file": base.name, "sha256": sha256_file(base)},
            "adapter": {"file": adapter.name, "sha256": sha256_file(adapter)} if adapter else None,
            "adapter_scale": scale}
    if adapter is None:
        return quantize_gguf(base, out, "bf16", before_commit=manifest_first(out, info))
    lora = load_lora(adapter, base)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".merge-") as tmp:
        f16 = merge_to_gguf(base, lora.tensors, lora.alpha, Path(tmp) / "merged-f16.gguf", "f16", adapter_scale=scale)
        return quantize_gguf(f16, out, "bf16", before_commit=manifest_first(out, info))


def merged_overrides(config: StackConfig, folder: Path | None = None, log=None) -> dict[str, object]:
    """``--set`` overrides that put every stage on its merged BF16 file, adapter cleared."""
    overrides: dict[str, object] = {}
    for stage in config.stages:
        base = resolve_model(stage.model, config.base_dir)
        adapter = stage.adapter if stage.adapter is not None and stage.adapter_scale != 0 else None
        path = merged_file(base, adapter, stage.adapter_scale if adapter else 0.0, folder, log)
        overrides[f"{stage.name}.model"] = str(path)
        overrides[f"{stage.name}.adapter"] = ""
    return overrides
