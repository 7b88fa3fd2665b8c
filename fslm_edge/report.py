"""``fslm-edge info``: what a stack resolves to, without loading llama.cpp."""

from __future__ import annotations

from pathlib import Path

from .config import is_stack_ref, load_target_config
from .ggufinfo import GGUFInfo, check_adapter, read_gguf_info
from .models import resolve_model

COMPUTE_BUFFER_BYTES = 48 << 20  # llama.cpp's scratch buffers for a small model, measured order of magnitude


def kv_cache_bytes(info: GGUFInfo, n_ctx: int) -> int:
    """f16 K and V for every layer and position."""
    if not (info.n_layers and info.n_embd and info.n_head):
        return 0
    head_dim = info.n_embd // info.n_head
    n_kv = info.n_head_kv or info.n_head
    return 2 * info.n_layers * n_ctx * n_kv * head_dim * 2


def stack_report(path: str | Path) -> dict:
    """A JSON-ready description of a stack's models, adapters and memory (a
    model reference, ``builtin:NAME`` or a ``.gguf`` path, as the one-stage
    stack ``fslm-edge run`` makes of it)."""
    config = load_target_config(str(path))
    models: dict[str, dict] = {}
    stages = []
    total_adapters = 0
    for stage in config.stages:
        model_path = resolve_model(stage.model, config.base_dir).resolve()
        info = read_gguf_info(model_path)
        entry = models.setdefault(str(model_path), {
            "path": str(model_path),
            "reference": stage.model,
            "name": info.name,
            "architecture": info.architecture,
            "quantization": info.file_type,
            "parameters": info.n_params,
            "file_bytes": info.file_size,
            "context_length_trained": info.context_length,
            "kv_cache_bytes": kv_cache_bytes(info, config.context_size),
            "stages": [],
        })
        entry["stages"].append(stage.name)
        adapter = None
        if stage.adapter is not None:
            adapter_info = check_adapter(stage.adapter, info)
            total_adapters += adapter_info.file_size
            adapter = {"path": str(stage.adapter), "bytes": adapter_info.file_size,
                       "alpha": adapter_info.lora_alpha, "tensors": len(adapter_info.tensors),
                       "scale": stage.adapter_scale}
        stages.append({"name": stage.name, "model": str(model_path), "adapter": adapter,
                       "chat": stage.chat, "max_tokens": stage.sampling.max_tokens,
                       "temperature": stage.sampling.temperature, "trainable": stage.train is not None})
    memory = sum(m["file_bytes"] + m["kv_cache_bytes"] + COMPUTE_BUFFER_BYTES for m in models.values())
    return {
        "stack": config.name,
        "file": str(config.path) if is_stack_ref(str(path)) else str(path),
        "description": config.description,
        "context_size": config.context_size,
        "threads": config.n_threads,
        "models": list(models.values()),
        "stages": stages,
        "memory_estimate_bytes": memory + total_adapters,
    }
