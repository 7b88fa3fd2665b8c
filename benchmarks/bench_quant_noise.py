"""Where torch and llama.cpp part on a Q4_1 base: llama.cpp's 8-bit activation rounding.

    python benchmarks/bench_quant_noise.py --data-dir ../shared/data [--tokens 1000] [--each-matrix]

llama.cpp multiplies a Q4_1 weight by activations it first rounds to Q8_1 (blocks of 32 values, one
fp16 scale each, integers in -127..127); Q8_0 weights (SmolLM2's tied embedding and output) by
activations rounded to Q8_0. A float torch model of the same weights does not round them. This script
writes copies of the base in which only some tensors keep their stored type (the rest F32) and, on
held-out text, compares llama.cpp on each copy with (a) the plain torch model and (b) the torch model
that rounds the activations of exactly those tensors the way llama.cpp does. One tensor at a time,
(b) matches llama.cpp almost exactly; over many tensors in a row it stops helping, because a
float-order difference upstream moves a value across a rounding boundary downstream and the two
computations part: the gap on the Q4_1 file is this rounding noise, not the export.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [("blk.0.ffn_down", ["blk.0.ffn_down."]), ("blk.0 (7 matrices)", ["blk.0."]),
         ("blk.0-2 (21)", ["blk.0.", "blk.1.", "blk.2."]), ("every block (210)", ["blk."]),
         ("token_embd / output (Q8_0)", ["token_embd."])]
EACH_MATRIX = [(f"blk.0.{m}", [f"blk.0.{m}."])
               for m in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")]


def round_like_q8(x, torch):
    """(dequantized activations, per-block correction for Q4_1 mins) as ggml's quantize_row_q8_1."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    scale = amax / 127.0
    q = torch.round(blocks * torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax)))
    scale16 = scale.half().float()
    sums16 = (scale * q.sum(-1, keepdim=True)).half().float()  # Q8_1's s = d * sum(q), stored fp16
    return (q * scale16).reshape(x.shape), (sums16 - scale16 * q.sum(-1, keepdim=True)).squeeze(-1)


def rounding_linear(linear, mins, torch):
    """A Linear whose product is ggml's: Q8 activations; Q4_1 mins times Q8_1's stored sums."""
    class RoundingLinear(torch.nn.Module):
        def forward(self, x):
            xq, correction = round_like_q8(x.float(), torch)
            out = xq @ linear.weight.T
            return out if mins is None else out + correction @ mins.T
    return RoundingLinear()


def q4_1_mins(reader, arch, n_head, n_kv) -> dict:
    """HF name -> per-block mins [rows, blocks] of every Q4_1 matrix."""
    from fslm_edge.convert.arch import from_gguf_layout, gguf_to_hf_name

    out = {}
    for t in reader.tensors:
        if t.tensor_type.name == "Q4_1":
            raw = np.asarray(reader.raw(t))
            mins = raw.reshape(raw.shape[0], -1, 20)[:, :, 2:4].copy().view(np.float16)[:, :, 0]
            out[gguf_to_hf_name(arch, t.name)] = from_gguf_layout(arch, t.name, mins.astype(np.float32), n_head, n_kv)
    return out


def write_partial_copy(reader, arch: str, dst: Path, keep: list[str]) -> None:
    """The base with tensors named by a prefix in ``keep`` stored as they are, every other one as F32."""
    from fslm_edge.convert.gguf_model import copy_kv
    from fslm_edge.convert.gguf_out import GGUFOut

    with GGUFOut(dst, arch) as out:
        copy_kv(reader, out)
        for t in reader.tensors:
            if any(t.name.startswith(k) for k in keep) and t.tensor_type.name != "F32":
                out.add_tensor(t.name, reader.raw(t), raw_dtype=t.tensor_type)
            else:
                out.add_tensor(t.name, reader.dequantize(t))
        out.commit()


def emulating_model(base: Path, arch: str, mins: dict, keep: list[str]):
    """The torch base with llama.cpp's activation rounding on the matrices a copy keeps quantized."""
    import torch

    from fslm_edge.convert.arch import hf_to_gguf_name
    from fslm_edge.convert.gguf_torch import load_torch_base

    model = load_torch_base(base)
    for name, module in list(model.named_modules()):
        for child, linear in list(module.named_children()):
            key = f"{name}.{child}.weight" if name else f"{child}.weight"
            gguf_name = hf_to_gguf_name(arch, key) if key in mins else None
            if child == "lm_head":  # SmolLM2 ties its output to token_embd (Q8_0)
                gguf_name = "token_embd.weight"
            if gguf_name and any(gguf_name.startswith(k) for k in keep):
                block_mins = torch.from_numpy(mins[key]) if key in mins else None
                setattr(module, child, rounding_linear(linear, block_mins, torch))
    return model


def held_out_text(base: Path, data_dir: Path, n_tokens: int) -> list[list[int]]:
    from fslm_edge.convert.data import GGUFTokenizer
    from fslm_edge.fileio import read_jsonl

    sequences, total = [], 0
    with GGUFTokenizer(base) as tok:
        for _, row in read_jsonl(data_dir / "strategyqa_dev.jsonl"):
            ids = tok.text_ids(row["question"] + " " + " ".join(row.get("facts") or []))
            sequences.append(ids)
            total += len(ids)
            if total >= n_tokens:
                break
    return sequences


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--each-matrix", action="store_true", help="also each of block 0's matrices alone")
    args = parser.parse_args()

    from fslm_edge.convert.compare import agreement, llama_cpp_logits, torch_logits
    from fslm_edge.convert.gguf_torch import load_torch_base, open_gguf, read_kv
    from fslm_edge.models import resolve_model

    base = resolve_model(args.model)
    reader = open_gguf(base)
    kv = read_kv(reader)
    arch = str(kv["general.architecture"])
    mins = q4_1_mins(reader, arch, kv[f"{arch}.attention.head_count"], kv[f"{arch}.attention.head_count_kv"])
    sequences = held_out_text(base, args.data_dir, args.tokens)
    plain = torch_logits(load_torch_base(base), sequences)
    whole = agreement(plain, llama_cpp_logits(base, sequences, n_threads=args.threads))
    print(f"{sum(map(len, sequences))} held-out positions; llama.cpp on the packaged file vs plain torch: "
          f"agreement {whole.agreement:.2%}, mean KL {whole.mean_kl:.2e}")
    print(f"{'tensors kept quantized':<28}{'vs plain torch':>28}{'vs torch rounding like llama.cpp':>36}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, keep in CASES + (EACH_MATRIX if args.each_matrix else []):
            copy = Path(tmp) / "partial.gguf"
            write_partial_copy(reader, arch, copy, keep)
            cpp = llama_cpp_logits(copy, sequences, n_threads=args.threads)
            a = agreement(plain, cpp)
            b = agreement(torch_logits(emulating_model(base, arch, mins, keep), sequences), cpp)
            print(f"{label:<28}{a.agreement:>12.2%}  KL {a.mean_kl:9.2e}{b.agreement:>20.2%}  KL {b.mean_kl:9.2e}",
                  flush=True)


if __name__ == "__main__":
    main()
