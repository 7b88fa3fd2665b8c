"""A Hugging Face safetensors folder as the base a stage is trained on.

``hf_base = "models/SmolLM2-135M-Instruct"`` in a ``[stage.train]`` recipe
names a transformers folder (``config.json`` + ``*.safetensors``) holding the
full-precision weights of the stage's GGUF ``model``. Training (and
``--merge``) then use these weights instead of the GGUF dequantized; the GGUF
still gives the tokenizer, the chat template and what the runtime loads, so
the exported LoRA applies over it. The two must have the same architecture and
shapes; anything else is refused before training starts.
"""

from __future__ import annotations

from pathlib import Path

from fslm_edge.errors import InputError, ModelError
from fslm_edge.fileio import parse_json_text

from .arch import ARCHS


def check_hf_folder(folder: Path) -> dict:
    """The folder's config.json (InputError naming what is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"hf_base: {folder} is not a folder; give a Hugging Face model folder "
                         "(config.json + *.safetensors)")
    config = folder / "config.json"
    if not config.is_file():
        raise InputError(f"hf_base: {folder} has no config.json; it must be a saved transformers model")
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"hf_base: {folder} has no *.safetensors weights (save with safe_serialization=True)")
    try:
        value = parse_json_text(config.read_bytes())
    except OSError as exc:
        raise InputError(f"hf_base: cannot read {config} ({exc.strerror})") from None
    except ValueError as exc:
        raise InputError(f"hf_base: {config}: {exc}; re-save the model with save_pretrained") from None
    if not isinstance(value, dict):
        raise InputError(f"hf_base: {config} must be a JSON object; re-save the model with save_pretrained")
    return value


def _text_config(config: dict) -> dict:
    return config.get("text_config", config)


def check_matches_gguf(config: dict, gguf: Path, folder: Path) -> None:
    """Refuse an HF folder whose architecture or shapes differ from the GGUF's."""
    from fslm_edge.ggufinfo import read_gguf_info

    info = read_gguf_info(gguf)
    spec = ARCHS.get(info.architecture)
    classes = config.get("architectures") or []
    if spec is None or spec.hf_class not in classes:
        raise ModelError(f"hf_base {folder} is {', '.join(classes) or 'an unknown architecture'}, but the "
                         f"stage's model {gguf.name} is {info.architecture}; they must be the same model")
    text = _text_config(config)
    embedding = info.tensors.get("token_embd.weight")
    pairs = [("num_hidden_layers", info.n_layers), ("hidden_size", info.n_embd),
             ("num_attention_heads", info.n_head), ("num_key_value_heads", info.n_head_kv),
             ("vocab_size", embedding.shape[-1] if embedding is not None else None)]
    for key, expected in pairs:
        if expected is not None and key in text and int(text[key]) != int(expected):
            raise ModelError(f"hf_base {folder}: {key} = {text[key]}, but {gguf.name} has {expected}; "
                             "the folder must hold the same model as the stage's GGUF")


def load_hf_base(folder: Path, gguf: Path):
    """The transformers model (fp32) of ``folder``, checked against ``gguf``."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    check_matches_gguf(check_hf_folder(folder), gguf, folder)
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def merge_hf_to_gguf(model, adapter_dir: Path, tokenizer_gguf: Path, out: Path, ftype: str = "f16",
                     before_commit=None) -> Path:
    """HF base + PEFT adapter merged in torch, written as a GGUF with the
    stage GGUF's tokenizer and chat template."""
    from peft import PeftModel

    from .gguf_model import write_hf_model

    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return write_hf_model(Path(out), merged, tokenizer_gguf, ftype=ftype, name=Path(out).stem,
                          before_commit=before_commit)
