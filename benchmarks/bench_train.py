"""Training throughput on this CPU: the packed trainer vs a plain padded PEFT loop.

    python benchmarks/bench_train.py --data-dir ../shared/data [--examples 96] [--batch 4]

Both loops train the same LoRA (recipe defaults: r=8 on q/k/v/o) on the same
examples of the real SmolLM2-135M-Instruct base (a StrategyQA "recall" stage:
question -> facts, mixed 2:1 with Alpaca instructions) for one epoch over the
same examples (packed: rows of <= 512 tokens, 4 rows a step; padded: --batch
examples a step, padded to the longest, full-vocabulary logits as PEFT's
usual loop computes them). "Useful" tokens are real (non-padding) tokens.

Default 96 examples: with 48 the packed loop runs only 4 steps and its first step's warm-up weighs on
it (2026-12-02, a 2-core AMD EPYC: 1.34x with 48 examples, 1.59x with 96: 177 against 111 useful tokens/s).
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
model = "smollm2-135m-instruct"

[[stage]]
name = "recall"
system = "You are a careful assistant who lists relevant facts."
template = "List the facts that help answer this question.\\n\\nQuestion: {{input}}"

[stage.train]
data = [
  {{ file = "strategyqa_train.jsonl", target = "facts", fields = {{ input = "question" }}, weight = 2.0 }},
  {{ file = "alpaca_en_demo_train.jsonl", target = "output", fields = {{ input = "instruction" }}, weight = 1.0 }},
]
max_examples = {examples}
val_fraction = 0.0
max_seq_len = 512
batch_tokens = 2048
"""


def load(data_dir: Path, examples: int):
    from fslm_edge.convert.data import GGUFTokenizer, load_stage_data
    from fslm_edge.config import load_stack_config
    from fslm_edge.models import resolve_model

    folder = Path(tempfile.mkdtemp())
    (folder / "s.toml").write_text(STACK.format(examples=examples))
    stage = load_stack_config(folder / "s.toml").stages[0]
    base = resolve_model(stage.model)
    with GGUFTokenizer(base) as tok:
        return stage, base, load_stage_data(stage, data_dir, tok), tok.end_id


def packed(stage, base, data, pad_id, steps: int, threads: int):
    from fslm_edge.convert.gguf_torch import load_torch_base
    from fslm_edge.convert.train import Trainer

    out = Path(tempfile.mkdtemp())
    marks = []
    trainer = Trainer(load_torch_base(base), data, stage.train, out, pad_id, max_steps=steps, progress=False,
                      threads=threads, on_step=lambda step, loss: marks.append(time.perf_counter()))
    start = time.perf_counter()
    result = trainer.run()
    return result.tokens, marks[-1] - start, result.train_loss, trainer.rows  # steps only, not the final save


def padded(stage, base, data, pad_id, steps: int, batch: int, threads: int):
    import torch
    from peft import LoraConfig, get_peft_model

    from fslm_edge.convert.gguf_torch import load_torch_base
    from fslm_edge.convert.packing import collate_padded, padded_batches

    torch.set_num_threads(threads)
    recipe = stage.train
    model = get_peft_model(load_torch_base(base), LoraConfig(
        r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
        target_modules=list(recipe.target_modules), task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate)
    batches = padded_batches(data.train, batch, recipe.seed)[:steps]
    useful = padded_total = 0
    start = time.perf_counter()
    for indices in batches:
        inputs = collate_padded(data.train, indices, pad_id)
        loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        useful += int(inputs["attention_mask"].sum())
        padded_total += inputs["input_ids"].numel()
    return useful, time.perf_counter() - start, float(loss), padded_total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4, help="examples per step of the padded loop")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    stage, base, data, pad_id = load(args.data_dir, args.examples)
    lengths = [len(e.ids) for e in data.train]
    print(f"examples: {len(data.train)}, tokens/example mean {sum(lengths) / len(lengths):.0f}, "
          f"max {max(lengths)}, target share {sum(e.n_target for e in data.train) / sum(lengths):.0%}")
    # one epoch over the same examples each; both use about the same memory (<= 2048 tokens a step)
    from fslm_edge.convert.packing import epoch_batches

    steps = len(epoch_batches(data.train, 512, 4, stage.train.seed, 0))
    tokens, seconds, loss, rows = packed(stage, base, data, pad_id, steps, args.threads)
    print(f"packed : {steps} steps x {rows} rows of <=512 tokens, {tokens} useful tokens in {seconds:.1f} s "
          f"= {tokens / seconds:,.0f} useful tok/s (last loss {loss:.3f})")
    n_padded = -(-len(data.train) // args.batch)
    useful, pseconds, ploss, total = padded(stage, base, data, pad_id, n_padded, args.batch, args.threads)
    print(f"padded : {n_padded} steps x {args.batch} examples, {useful} useful of {total} tokens in {pseconds:.1f} s "
          f"= {useful / pseconds:,.0f} useful tok/s (last loss {ploss:.3f})")
    print(f"speed-up (useful tokens/s): {tokens / seconds / (useful / pseconds):.2f}x")


if __name__ == "__main__":
    main()
