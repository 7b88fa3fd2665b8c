"""Evaluation speed: llama.cpp KV-reuse scoring vs transformers fp32, and a stack.

    python benchmarks/bench_eval.py --data-dir ../shared/data [--n 100] [--n-hf 30] [--threads 2]

1. single model (packaged SmolLM2-135M-Instruct Q4_1), four-choice ARC-Easy test
   questions, ``"Question: ...\\nAnswer:"`` + ``" choice"``: questions/s with the
   harness's scorer (prompt decoded once, only choice tokens per choice);
2. the same scoring with transformers in fp32 on the same model (the GGUF
   dequantized at load), lm-eval
   style: one forward over the four padded (prompt + choice) sequences per
   question; predictions and log-likelihoods compared with (1);
3. the same llama.cpp scorer on an F16 copy of the same weights (speed only);
4. ``BatchScorer`` (``fslm-edge eval --batch 16``: 16 questions per decode) on the
   Q4_1 file and on a BF16 copy of its weights (``fslm-edge quantize --type bf16``),
   with their agreement with the F16 copy (the weights without kernel rounding);
5. seconds per question for ``stacks/qa.toml`` (prompt-only, 3 stages) on ARC-Easy;
6. generate mode (``fslm-edge eval --mode generate [--batch N]``): questions/s of ``stacks/qa.toml``
   and of the base model run as ``fslm-edge run`` runs them (every stage generated,
   temperature 0), on ``--n-generate`` ARC-Easy questions (the base on 1 thread, the stack on its own),
   one at a time and ``--generate-batch`` at once (``--generate-only`` runs just this part).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def arc_questions(data_dir: Path, n: int) -> list[dict]:
    from fslm_edge.fileio import read_jsonl

    rows = []
    for _, row in read_jsonl(data_dir / "arc_easy_test.jsonl"):
        if len(row["choices"]) == 4:
            rows.append(row)
        if len(rows) == n:
            break
    return rows


def requests(row: dict) -> tuple[str, list[str]]:
    return f"Question: {row['question']}\nAnswer:", [f" {c}" for c in row["choices"]]


def bench_llama(rows, threads: int, path: Path | None = None):
    from fslm_edge.engine import LoadedModel
    from fslm_edge.engine.scoring import ChoiceScorer, split_continuation
    from fslm_edge.models import resolve_model

    model = LoadedModel(path or resolve_model("smollm2-135m-instruct"), 2048, threads, 512)
    scorer = ChoiceScorer(model)
    results = []
    for row in rows[:3]:  # warm-up
        context, conts = requests(row)
        pairs = [split_continuation(model, context, c) for c in conts]
        scorer.score(pairs[0][0], [p[1] for p in pairs])
    scorer.decoded_tokens = 0
    started = time.perf_counter()
    for row in rows:
        context, conts = requests(row)
        pairs = [split_continuation(model, context, c) for c in conts]
        results.append([s.logprob for s in scorer.score(pairs[0][0], [p[1] for p in pairs])])
    seconds = time.perf_counter() - started
    tokens = scorer.decoded_tokens
    model.close()
    return results, seconds, tokens


def prompt_throughput(threads: int, n_tokens: int = 128, rounds: int = 5) -> float:
    """llama.cpp's own prompt-processing rate (tokens/s, one batch, best of
    ``rounds``): the ceiling for any scorer, which must decode every token."""
    import llama_cpp

    from fslm_edge.engine import LoadedModel
    from fslm_edge.models import resolve_model

    model = LoadedModel(resolve_model("smollm2-135m-instruct"), 2048, threads, 512)
    llm, best = model.llm, float("inf")
    batch = llm._batch.batch
    for _ in range(rounds):
        llm._ctx.kv_cache_seq_rm(0, 0, -1)
        batch.n_tokens = n_tokens
        for i in range(n_tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = 1000 + i, i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, i == n_tokens - 1
        started = time.perf_counter()
        if llama_cpp.llama_decode(llm._ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        best = min(best, time.perf_counter() - started)
    model.close()
    return n_tokens / best


def bench_f16_copy(rows, threads: int, reference):
    """The same scorer on an F16 copy of the packaged weights (dequantized,
    written to a temporary folder): llama.cpp's F16 matmuls skip the Q8_1
    activation quantization of the Q4_1 kernels and run faster on AVX2."""
    import tempfile

    from fslm_edge.convert.gguf_model import merge_to_gguf
    from fslm_edge.models import resolve_model

    with tempfile.TemporaryDirectory() as folder:
        path = merge_to_gguf(resolve_model("smollm2-135m-instruct"), {}, 1.0, Path(folder) / "f16.gguf", ftype="f16")
        results, seconds, _ = bench_llama(rows, threads, path)
    agree = sum(_argmax(a) == _argmax(b) for a, b in zip(results, reference))
    diff = max(abs(x - y) for a, b in zip(results, reference) for x, y in zip(a, b))
    return len(rows) / seconds, agree, diff, results


def bench_batched_copies(rows, threads: int, f16_reference) -> dict[str, float]:
    """``BatchScorer`` (16 questions per decode) on the Q4_1 file and on a BF16 copy."""
    import tempfile

    from fslm_edge.convert.gguf_model import quantize_gguf
    from fslm_edge.models import resolve_model

    speeds = {}
    with tempfile.TemporaryDirectory() as folder:
        q4_1 = resolve_model("smollm2-135m-instruct")
        for name, path in (("Q4_1", q4_1), ("BF16 copy", None)):
            path = path or quantize_gguf(q4_1, Path(folder) / "bf16.gguf", "bf16", threads)
            results, qps = bench_batched(rows, threads, path)
            speeds[name] = qps
            print(f"batch scorer (16 questions per decode) on {name}: {qps:.1f} questions/s; against the F16 "
                  f"copy: {compare(results, f16_reference)}", flush=True)
    return speeds


def bench_batched(rows, threads: int, path: Path, batch: int = 16):
    """``BatchScorer`` on ``path``, ``batch`` questions per decode: (log-likelihoods, q/s)."""
    from fslm_edge.engine import LoadedModel
    from fslm_edge.engine.scoring import BatchScorer, split_continuation

    model = LoadedModel(path, 2048, threads, 512)
    scorer = BatchScorer(model, threads, max_sequences=8 * batch)
    token_requests = []
    for row in rows:
        context, conts = requests(row)
        pairs = [split_continuation(model, context, c) for c in conts]
        token_requests.append((pairs[0][0], [p[1] for p in pairs]))
    scorer.score_many(token_requests[:batch])  # warm-up
    started = time.perf_counter()
    results = []
    for start in range(0, len(token_requests), batch):
        chunk = token_requests[start: start + batch]
        results += [[s.logprob for s in scores] for scores in scorer.score_many(chunk)]
    seconds = time.perf_counter() - started
    scorer.close()
    model.close()
    return results, len(rows) / seconds


def compare(results, reference) -> str:
    agree = sum(_argmax(a) == _argmax(b) for a, b in zip(results, reference))
    diffs = [abs(x - y) for a, b in zip(results, reference) for x, y in zip(a, b)]
    return f"same prediction on {agree}/{len(reference)}, mean |diff| {sum(diffs) / len(diffs):.3f} nats"


def _argmax(values) -> int:
    return max(range(len(values)), key=values.__getitem__)


def load_hf(threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fslm_edge.models import resolve_model

    torch.set_num_threads(threads)
    gguf = resolve_model("smollm2-135m-instruct")
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    print(f"(transformers loaded the GGUF dequantized to fp32 in {time.perf_counter() - started:.0f} s)", flush=True)
    return model, tokenizer


def bench_hf(rows, threads: int):
    import torch

    model, tokenizer = load_hf(threads)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def score(row):
        context, conts = requests(row)
        ctx_ids = tokenizer(context)["input_ids"]
        seqs = []
        for cont in conts:
            whole = tokenizer(context + cont)["input_ids"]
            seqs.append((whole, len(whole) - len(ctx_ids)))
        width = max(len(s) for s, _ in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs])
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        out = []
        for b, (s, n_cont) in enumerate(seqs):
            positions = range(len(s) - n_cont, len(s))
            out.append(float(sum(logprobs[b, p - 1, s[p]] for p in positions)))
        return out

    for row in rows[:2]:
        score(row)
    started = time.perf_counter()
    results = [score(row) for row in rows]
    return results, time.perf_counter() - started


def bench_stack(rows, stack_file: Path):
    from fslm_edge.evaluation.harness import StackTarget
    from fslm_edge.evaluation.data import parse_mc
    from fslm_edge.evaluation.tasks import TASKS

    target = StackTarget(str(stack_file))
    try:
        started = time.perf_counter()
        generated = 0
        for number, row in enumerate(rows, start=1):
            record = target.run_mc(TASKS["arc_easy"], parse_mc(row, number, "bench"), False)
            generated += record["generated_tokens"]
        return (time.perf_counter() - started) / len(rows), generated / len(rows)
    finally:
        target.close()


def bench_generate(rows, refs: list[str], batches: tuple[int, ...] = (1,)) -> None:
    """Generate mode, one question at a time and ``batch`` questions at once
    (``--batch``: stack instances sharing a batched decoder): questions/s,
    tokens generated and accuracy. The base model runs on 1 thread; a stack
    file on its own ``threads`` (printed)."""
    from fslm_edge.evaluation.data import parse_mc
    from fslm_edge.evaluation.harness import GenerateTarget
    from fslm_edge.evaluation.tasks import TASKS

    examples = [parse_mc(row, number, "bench") for number, row in enumerate(rows, start=1)]
    task = TASKS["arc_easy"]
    for ref, batch in ((ref, batch) for ref in refs for batch in batches):
        target = GenerateTarget(ref, 1, batch)
        threads = target.stack.config.n_threads  # a stack file keeps its own (0: one fewer than the cores)
        try:
            target.run_mc(task, examples[0])  # warm-up
            started = time.perf_counter()
            records = []
            for start in range(0, len(examples), batch):
                chunk = examples[start: start + batch]
                records += target.run_mc_many(task, chunk) if batch > 1 else [target.run_mc(task, chunk[0])]
            seconds = time.perf_counter() - started
        finally:
            target.close()
        tokens = sum(r["generated_tokens"] for r in records) / len(records)
        right = sum(r["correct"] for r in records)
        print(f"generate mode, {ref}, --batch {batch}: {len(records)} ARC-Easy questions in {seconds:.1f} s = "
              f"{len(records) / seconds:.2f} questions/s, {tokens:.0f} tokens generated per question, "
              f"{right}/{len(records)} right ({threads} thread(s), load average {os.getloadavg()[0]:.2f})",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--n", type=int, default=100, help="ARC-Easy questions for llama.cpp")
    parser.add_argument("--n-hf", type=int, default=30, help="questions for transformers (slow)")
    parser.add_argument("--n-stack", type=int, default=3, help="questions through stacks/qa.toml")
    parser.add_argument("--n-generate", type=int, default=20, help="questions per target in generate mode")
    parser.add_argument("--generate-only", action="store_true", help="only the generate-mode figure (6.)")
    parser.add_argument("--generate-batch", default="1,4", help="generate mode's --batch values to measure")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = arc_questions(args.data_dir, max(args.n, args.n_hf, args.n_generate))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; threads {args.threads}")
    generate_refs = [str(ROOT / "stacks" / "qa.toml"), "builtin:smollm2-135m-instruct"]
    batches = tuple(int(x) for x in args.generate_batch.split(","))
    if args.generate_only:
        bench_generate(rows[: args.n_generate], generate_refs, batches)
        return

    llama, seconds, tokens = bench_llama(rows[: args.n], args.threads)
    llama_qps = args.n / seconds
    print(f"llama.cpp KV-reuse scorer: {args.n} four-choice ARC-Easy questions in {seconds:.2f} s = "
          f"{llama_qps:.1f} questions/s ({tokens / args.n:.1f} tokens decoded per question)", flush=True)

    rate = prompt_throughput(args.threads)
    print(f"llama.cpp prompt processing on this model: {rate:.0f} tokens/s, so a scorer that decodes "
          f"{tokens / args.n:.1f} tokens per question can reach at most {rate / (tokens / args.n):.1f} questions/s",
          flush=True)

    f16_qps, agree, diff, f16 = bench_f16_copy(rows[: args.n], args.threads, llama)
    print(f"same scorer on an F16 copy of these weights: {f16_qps:.1f} questions/s; same prediction as Q4_1 on "
          f"{agree}/{args.n}, largest log-likelihood difference {diff:.3f} nats", flush=True)
    print(f"  Q4_1 KV-reuse scorer against the F16 copy: {compare(llama, f16)}")

    batched = bench_batched_copies(rows[: args.n], args.threads, f16)
    best_qps = max([llama_qps] + [qps for qps in batched.values()])

    hf, hf_seconds = bench_hf(rows[: args.n_hf], args.threads)
    hf_qps = args.n_hf / hf_seconds
    agree = sum(_argmax(a) == _argmax(b) for a, b in zip(llama, hf))
    diff = max(abs(x - y) for a, b in zip(llama, hf) for x, y in zip(a, b))
    print(f"transformers fp32 (same weights, dequantized): {args.n_hf} questions in {hf_seconds:.2f} s = "
          f"{hf_qps:.2f} questions/s")
    print(f"speedup llama.cpp / transformers: {llama_qps / hf_qps:.1f}x (KV-reuse scorer on Q4_1), "
          f"{best_qps / hf_qps:.1f}x (fastest above); same prediction on {agree}/{args.n_hf}; "
          f"largest log-likelihood difference {diff:.3f} nats")

    per_q, generated = bench_stack(rows[: args.n_stack], ROOT / "stacks" / "qa.toml")
    print(f"stacks/qa.toml (3 prompt-only stages, choices scored on the final prompt): {per_q:.2f} s/question, "
          f"{generated:.0f} tokens generated per question ({args.n_stack} questions)")
    bench_generate(rows[: args.n_generate], generate_refs, batches)


if __name__ == "__main__":
    main()
