"""GGUF base model -> transformers model, dequantized with numpy and cached.

    model = load_torch_base(path)     # LlamaForCausalLM / Gemma3ForCausalLM, float32

The first call dequantizes every tensor with ``gguf.quants.dequantize``,
undoes llama.cpp's layout conventions (:mod:`convert.arch`) and saves the
model as safetensors + config under ``cache_dir()/torch/<sha256 of the GGUF>``
(written to a temporary folder, then renamed). Later calls load the cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fslm_edge.errors import ModelError
from fslm_edge.fileio import atomic_folder, sha256_file
from fslm_edge.models import cache_dir, check_gguf_file

from .arch import arch_spec, from_gguf_layout, gguf_to_hf_name, hf_config_dict

def open_gguf(path: str | os.PathLike):
    """A parsed GGUF (:class:`convert.ggufread.GGUFFile`); ModelError if unusable."""
    from .ggufread import GGUFFile

    check_gguf_file(Path(path))
    return GGUFFile(path)


def read_kv(reader) -> dict:
    """Metadata of a GGUF as key -> value."""
    return {key: fld.value for key, fld in reader.fields.items()}


def vocab_size(reader) -> int:
    tokens = reader.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelError(f"{reader.path} has no tokenizer (tokenizer.ggml.tokens); it cannot be a base model")
    return len(tokens)


def iter_dequantized(reader) -> Iterator[tuple[str, np.ndarray]]:
    for tensor in reader.tensors:
        yield tensor.name, reader.dequantize(tensor)


def gguf_to_hf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(transformers config dict, HF-named float32 state) of a GGUF model."""
    reader = open_gguf(path)
    kv = read_kv(reader)
    arch = str(kv.get("general.architecture", "?"))
    arch_spec(arch)
    names = {t.name for t in reader.tensors}
    config = hf_config_dict(arch, kv, vocab_size(reader), tied="output.weight" not in names)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    state = {}
    for name, array in iter_dequantized(reader):
        if name.startswith("rope_") or name.endswith("rope_freqs.weight"):
            continue  # computed by transformers from the config
        state[gguf_to_hf_name(arch, name)] = from_gguf_layout(arch, name, array, n_head, n_kv)
    return config, state


def build_model(config_dict: dict, state: dict, dtype=None):
    """A transformers causal LM from a config dict and a state of arrays."""
    import torch
    import transformers
    from transformers.initialization import no_init_weights

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    cls = getattr(transformers, config.architectures[0])
    with no_init_weights():
        model = cls(config)
    tensors = {k: torch.from_numpy(np.require(v, None, ["C", "W"])) if isinstance(v, np.ndarray) else v
               for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"weights do not fit {cls.__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(dtype or torch.float32)
    model.eval()
    return model


def torch_cache_folder(gguf_path: str | os.PathLike, sha256: str | None = None) -> Path:
    return cache_dir() / "torch" / (sha256 or sha256_file(Path(gguf_path)))


def load_torch_base(gguf_path: str | os.PathLike, dtype=None):
    """The transformers model of a GGUF base, from the on-disk cache if present."""
    import torch
    from safetensors.torch import load_file

    folder = torch_cache_folder(gguf_path)
    if not (folder / "model.safetensors").is_file():
        config, state = gguf_to_hf(gguf_path)
        _save_cache(folder, config, state)
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    return build_model(config, state, dtype or torch.float32)


def _save_cache(folder: Path, config: dict, state: dict[str, np.ndarray]) -> None:
    import torch
    from safetensors.torch import save_file

    try:
        with atomic_folder(folder, keep_existing=True) as tmp:
            tensors = {k: torch.from_numpy(np.require(v, np.float32, ["C", "W"])) for k, v in state.items()}
            save_file(tensors, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(config, indent=1))
    except OSError:
        if not (folder / "model.safetensors").is_file():  # not a concurrent writer that won
            raise
