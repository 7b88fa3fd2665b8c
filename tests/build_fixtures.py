"""Helpers for the build-toolchain tests: tiny random models of both
architectures, written as GGUF with the SmolLM2 tokenizer, and tiny datasets."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from fslm_edge.models import resolve_model

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)


def tiny_hf_model(arch: str, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    vocab = 49152  # the SmolLM2 tokenizer's
    if arch == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab, head_dim=16, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                          bos_token_id=1, eos_token_id=2, **TINY)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Gemma3TextConfig(
            vocab_size=vocab, head_dim=32, query_pre_attn_scalar=32, sliding_window=512, tie_word_embeddings=True,
            layer_types=["sliding_attention", "sliding_attention"], bos_token_id=1, eos_token_id=2,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}, **TINY)
        config.architectures = ["Gemma3ForCausalLM"]
        model = transformers.Gemma3ForCausalLM(config)
    with torch.no_grad():  # norms away from their init so conventions (+1) matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.randn_like(param) * 0.3 + (0.0 if arch == "gemma3" else 1.0))
            elif param.ndim == 2:
                param.copy_(torch.randn_like(param) * 0.08)
    return model.eval()


def tiny_gguf(folder: Path, arch: str, seed: int = 0, ftype: str = "f32") -> Path:
    from fslm_edge.convert.gguf_model import write_hf_model

    path = folder / f"tiny-{arch}-{seed}.gguf"
    if not path.exists():
        write_hf_model(path, tiny_hf_model(arch, seed), resolve_model("smollm2-135m-instruct"), ftype=ftype,
                       name=f"tiny-{arch}")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


QA_ROWS = [
    {"question": f"What is {a} plus {b}?", "answer": str(a + b), "facts": [f"{a} is a number.", f"{b} too."]}
    for a in range(1, 9) for b in range(1, 6)
]


def write_stack(folder: Path, model: Path, data: str, extra: str = "", name: str = "stack.toml") -> Path:
    body = textwrap.dedent(f"""\
        [stack]
        name = "tiny"
        model = "{model}"
        context_size = 512

        [[stage]]
        name = "answer"
        system = "Answer briefly."
        template = "Question: {{input}}"
        max_tokens = 8

        [stage.train]
        data = [{data}]
        rank = 4
        alpha = 8
        max_seq_len = 128
        batch_tokens = 256
        learning_rate = 0.01
        eval_every = 2
        save_every = 2
        val_fraction = 0.1
        """)
    extra = textwrap.dedent(extra)
    overridden = {line.split("=")[0].strip() for line in extra.splitlines() if "=" in line}
    body = "\n".join(line for line in body.splitlines() if line.split("=")[0].strip() not in overridden)
    body += "\n" + extra
    path = folder / name
    path.write_text(body)
    return path


def logits_llama_cpp(path: Path, tokens: list[int], lora: Path | None = None) -> np.ndarray:
    from fslm_edge.engine import open_llama

    llm = open_llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                     lora_path=str(lora) if lora else None)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()

