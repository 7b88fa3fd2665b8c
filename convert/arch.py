"""Per-architecture conventions between Hugging Face checkpoints and GGUF.

Pure numpy: tensor names, llama's q/k row permutation (llama.cpp
``convert_hf_to_gguf.py``, ``LlamaModel.permute``), Gemma 3's RMSNorm weights
stored with +1 (``Gemma3Model.norm_shift``), and the hyperparameters that
become a transformers config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from fslm_edge.errors import ModelError


@dataclass(frozen=True)
class ArchSpec:
    name: str  # GGUF general.architecture
    hf_class: str  # transformers class name
    permute_qk: bool  # llama.cpp permutes q/k rows (rotary pairs) for this arch
    norm_shift: float  # added to every *norm.weight when written to GGUF
    layer_names: tuple[tuple[str, str], ...]  # HF module path in a layer -> GGUF tensor stem


_COMMON = (
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
)
ARCHS = {
    "llama": ArchSpec("llama", "LlamaForCausalLM", True, 0.0,
                      _COMMON + (("post_attention_layernorm", "ffn_norm"),)),
    "gemma3": ArchSpec("gemma3", "Gemma3ForCausalLM", False, 1.0, _COMMON + (
        ("post_attention_layernorm", "post_attention_norm"), ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"), ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"))),
}
_GLOBAL = (("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"),
           ("lm_head.weight", "output.weight"))
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)\Z")
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)\.(weight|bias)\Z")


def arch_spec(arch: str) -> ArchSpec:
    spec = ARCHS.get(arch)
    if spec is None:
        raise ModelError(f"architecture '{arch}' is not supported by the build tools (supported: {', '.join(ARCHS)})")
    return spec


def hf_to_gguf_name(arch: str, name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    name = name.removeprefix("base_model.model.")
    for hf, gg in _GLOBAL:
        if name == hf:
            return gg
    match = _LAYER.match(name)
    if match:
        for hf, gg in arch_spec(arch).layer_names:
            if match.group(2) == hf:
                return f"blk.{match.group(1)}.{gg}.{match.group(3)}"
    raise ModelError(f"no GGUF name for tensor '{name}' of a {arch} model")


def gguf_to_hf_name(arch: str, name: str) -> str:
    for hf, gg in _GLOBAL:
        if name == gg:
            return hf
    match = _BLOCK.match(name)
    if match:
        for hf, gg in arch_spec(arch).layer_names:
            if match.group(2) == gg:
                return f"model.layers.{match.group(1)}.{hf}.{match.group(3)}"
    raise ModelError(f"GGUF tensor '{name}' has no transformers counterpart for a {arch} model")


def _heads_for(name: str, n_head: int, n_head_kv: int) -> int | None:
    if ".attn_q." in name:
        return n_head
    if ".attn_k." in name:
        return n_head_kv
    return None


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a q/k projection (llama.cpp LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF -> HF row order (inverse of :func:`permute_rows`)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf_layout(arch: str, gguf_name: str, w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """An HF tensor (or LoRA B) in the row order and offset the GGUF uses."""
    spec = arch_spec(arch)
    if spec.permute_qk and (heads := _heads_for(gguf_name, n_head, n_head_kv)):
        w = permute_rows(w, heads)
    if spec.norm_shift and gguf_name.endswith("norm.weight"):
        w = w + spec.norm_shift
    return w


def from_gguf_layout(arch: str, gguf_name: str, w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    spec = arch_spec(arch)
    if spec.permute_qk and (heads := _heads_for(gguf_name, n_head, n_head_kv)):
        w = unpermute_rows(w, heads)
    if spec.norm_shift and gguf_name.endswith("norm.weight"):
        w = w - spec.norm_shift
    return w


def hf_config_dict(arch: str, kv: dict, vocab_size: int, tied: bool) -> dict:
    """transformers config kwargs from GGUF metadata (``kv`` maps key -> value)."""
    def get(key, default=None):
        value = kv.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelError(f"GGUF metadata lacks {arch}.{key}")
        return value

    n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    common = dict(
        vocab_size=vocab_size, hidden_size=n_embd, intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")), num_attention_heads=n_head,
        num_key_value_heads=int(get("attention.head_count_kv", n_head)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(get("context_length")), tie_word_embeddings=tied,
        bos_token_id=kv.get("tokenizer.ggml.bos_token_id"), eos_token_id=kv.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=kv.get("tokenizer.ggml.padding_token_id"), architectures=[arch_spec(arch).hf_class],
    )
    if arch == "llama":
        return dict(common, model_type="llama", head_dim=int(get("rope.dimension_count", n_embd // n_head)),
                    rope_parameters={"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))},
                    attention_bias=False, mlp_bias=False, hidden_act="silu")
    head_dim = int(get("attention.key_length", 256))
    n_layers = common["num_hidden_layers"]
    # llama.cpp gemma3: every 6th layer is global; local layers use rope base 10000 unless given
    return dict(common, model_type="gemma3_text", head_dim=head_dim, query_pre_attn_scalar=head_dim,
                sliding_window=int(get("attention.sliding_window", 512)),
                layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)],
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 1e6))},
                    "sliding_attention": {"rope_type": "default",
                                          "rope_theta": float(get("rope.freq_base_swa", 10000.0))}},
                hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None, attn_logit_softcapping=None)


def gguf_arch_kv(arch: str, config) -> list[tuple[str, str, object]]:
    """(GGUFWriter method, key suffix, value) for a transformers config: the
    metadata a model GGUF of ``arch`` needs (tokenizer metadata comes apart)."""
    rope = config.rope_parameters
    items = [
        ("add_uint32", "context_length", config.max_position_embeddings),
        ("add_uint32", "embedding_length", config.hidden_size),
        ("add_uint32", "block_count", config.num_hidden_layers),
        ("add_uint32", "feed_forward_length", config.intermediate_size),
        ("add_uint32", "attention.head_count", config.num_attention_heads),
        ("add_uint32", "attention.head_count_kv", config.num_key_value_heads),
        ("add_float32", "attention.layer_norm_rms_epsilon", config.rms_norm_eps),
    ]
    if arch == "llama":
        items += [("add_float32", "rope.freq_base", rope["rope_theta"]),
                  ("add_uint32", "rope.dimension_count", config.head_dim),
                  ("add_uint32", "vocab_size", config.vocab_size)]
    else:
        items += [("add_uint32", "attention.key_length", config.head_dim),
                  ("add_uint32", "attention.value_length", config.head_dim),
                  ("add_uint32", "attention.sliding_window", config.sliding_window),
                  ("add_float32", "rope.freq_base", rope["full_attention"]["rope_theta"])]
    return items
