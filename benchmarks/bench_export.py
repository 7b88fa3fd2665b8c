"""Export, merge and quantization times, and torch vs llama.cpp agreement, on
the real SmolLM2-135M-Instruct base with a briefly trained adapter.

    python benchmarks/bench_export.py --data-dir ../shared/data [--steps 20] [--tokens 3000] [--prompts 50]

1. trains a "recall" stage (StrategyQA question -> facts) for a few steps with
   ``fslm-edge build``'s code path (adapter exported, merged F16, quantized);
2. times each export step;
3. over >= --tokens held-out tokens (StrategyQA dev prompts + targets) compares
   next-token argmax and KL(torch || llama.cpp) for torch base+adapter vs
   llama.cpp base GGUF + adapter GGUF, and vs the merged F16 GGUF;
4. greedy generations (llama.cpp) of base+adapter vs merged F16 on --prompts prompts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STACK = """\
[stack]
name = "bench"
model = "{model}"

[[stage]]
name = "recall"
system = "You are a careful assistant who lists relevant facts."
template = "List the facts that help answer this question.\\n\\nQuestion: {{input}}"

[stage.train]
data = [{{ file = "strategyqa_train.jsonl", target = "facts", fields = {{ input = "question" }} }}]
max_examples = 400
val_fraction = 0.02
max_seq_len = 512
batch_tokens = 512
learning_rate = 0.001
eval_every = 1000
save_every = 1000
"""


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    print(f"{label:<28}{time.perf_counter() - start:8.2f} s")
    return value


def held_out(stage, base, data_dir: Path, n_tokens: int, n_prompts: int):
    """Token sequences (prompt + target) and prompts from StrategyQA dev."""
    from fslm_edge.convert.data import GGUFTokenizer, encode_row, iter_rows

    source = stage.train.data[0]
    sequences, prompts, total = [], [], 0
    with GGUFTokenizer(base) as tok:
        for number, row in iter_rows(data_dir / "strategyqa_dev.jsonl"):
            example = encode_row(stage, source, row, tok, f"dev:{number}")
            if total < n_tokens:
                sequences.append(example.ids)
                total += len(example.ids)
            if len(prompts) < n_prompts:
                prompts.append(example.ids[: example.n_prompt])
            if total >= n_tokens and len(prompts) >= n_prompts:
                break
    return sequences, prompts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="base model reference")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--max-new", type=int, default=48)
    args = parser.parse_args()

    from peft import PeftModel

    from fslm_edge.convert.build import BuildOptions, build_stack
    from fslm_edge.convert.compare import agreement, greedy, llama_cpp_logits, torch_logits
    from fslm_edge.convert.export import export_lora, load_lora
    from fslm_edge.convert.gguf_model import merge_to_gguf, quantize_gguf
    from fslm_edge.convert.gguf_torch import load_torch_base
    from fslm_edge.config import load_stack_config
    from fslm_edge.models import resolve_model

    folder = Path(tempfile.mkdtemp())
    (folder / "s.toml").write_text(STACK.format(model=args.model))
    stage = load_stack_config(folder / "s.toml").stages[0]
    base = resolve_model(stage.model)
    start = time.perf_counter()
    [built] = list(build_stack(folder / "s.toml", BuildOptions(data_dir=args.data_dir, out_dir=folder / "out",
                                                               max_steps=args.steps, progress=False, threads=2)))
    print(f"trained {built.steps} steps in {time.perf_counter() - start:.0f} s (incl. export); "
          f"train loss {built.train_loss:.3f}, val loss {built.val_loss:.3f}")
    adapter_dir = built.folder / "adapter"
    lora_gguf = timed("export LoRA GGUF", export_lora, adapter_dir, base, folder / "x.lora.gguf")
    lora = load_lora(adapter_dir, base)
    merged = timed("merge -> F16 GGUF", merge_to_gguf, base, lora.tensors, lora.alpha, folder / "m.f16.gguf")
    for qtype in ("q8_0", "q4_k_m", "q4_0"):
        timed(f"quantize F16 -> {qtype}", quantize_gguf, merged, folder / f"m.{qtype}.gguf", qtype)

    base_f16 = timed("base -> F16 GGUF (no LoRA)", merge_to_gguf, base, {}, 1.0, folder / "base.f16.gguf")
    sequences, prompts = held_out(stage, base, args.data_dir, args.tokens, args.prompts)
    model = PeftModel.from_pretrained(load_torch_base(base), str(adapter_dir))
    reference = timed("torch logits", torch_logits, model, sequences)
    rows = [("llama.cpp base GGUF + LoRA GGUF", base, lora_gguf),
            ("llama.cpp base as F16 + LoRA GGUF", base_f16, lora_gguf),
            ("llama.cpp merged F16", merged, None),
            ("llama.cpp base GGUF, no adapter", base, None)]
    for label, gguf, adapter in rows:
        result = agreement(reference, llama_cpp_logits(gguf, sequences, lora=adapter))
        print(f"{label:<34} vs torch base+adapter: {result.positions} positions, next-token agreement "
              f"{result.agreement:.2%}, mean KL {result.mean_kl:.5f} nats")
    with model.disable_adapter():  # the quantized base alone: llama.cpp's integer dot products vs exact float
        plain = agreement(torch_logits(model, sequences), llama_cpp_logits(base, sequences))
    print(f"{'llama.cpp base GGUF, no adapter':<34} vs torch base, no adapter: {plain.positions} positions, "
          f"next-token agreement {plain.agreement:.2%}, mean KL {plain.mean_kl:.5f} nats")
    from_merged = greedy(merged, prompts, args.max_new)
    for label, gguf in (("base GGUF", base), ("base as F16", base_f16)):
        with_lora = greedy(gguf, prompts, args.max_new, lora=lora_gguf)
        same = sum(a == b for a, b in zip(with_lora, from_merged))
        print(f"greedy ({args.max_new} new tokens) {label} + adapter vs merged F16: identical on "
              f"{same}/{len(prompts)} prompts ({same / len(prompts):.0%})")


if __name__ == "__main__":
    main()
