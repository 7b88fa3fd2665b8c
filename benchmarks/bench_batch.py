"""Does batching pay? Generation throughput of N sequences decoded together
(``engine.BatchedDecoder``) against the same N generated one at a time.

    python benchmarks/bench_batch.py [--gguf FILE ...] [--sizes 1,2,4,8] [--tokens 48] [--threads 1]
        [--processes 2]

For each GGUF (default: the packaged SmolLM2-135M-Instruct, Q4_1), N chat
questions, greedy, at most ``--tokens`` tokens each, prompts included in the
time: tokens/s one at a time (``LoadedModel.generate``, N in a row) and
batched (N threads at once through one decoder), with the speed-up.
Whether it pays depends on llama.cpp's matmul kernels for the weights' type
on this CPU (docs/server.md quotes a run: BF16 2.1x at 4 sequences, the
packaged Q4_1 1.0x). Make a copy of another type with
``fslm-edge quantize builtin:smollm2-135m-instruct --type bf16 --out FILE``.
``--processes 2``: two copies of the measurement at once, each on its own
threads, as two workers or two stages' decoders of a server run at once on
two cores: how much each copy slows the other (docs/server.md, "Merged
files": a few percent for BF16 and Q4_0 here, 12% for Q8_0).
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = ["Why is the sky blue?", "What do plants need to grow?", "Why do we have seasons?",
             "What makes ice float on water?", "Why do cats purr?", "How do bees make honey?",
             "What causes thunder?", "Why does bread rise?"]


def prompts(model, n: int) -> list[list[int]]:
    return [model.tokenize(f"<|im_start|>user\n{QUESTIONS[i % len(QUESTIONS)]}<|im_end|>\n<|im_start|>assistant\n")
            for i in range(n)]


def one_at_a_time(model, tokens: list[list[int]], sampling) -> tuple[float, int]:
    started = time.perf_counter()
    produced = sum(len(list(model.generate(p, sampling))) for p in tokens)
    return time.perf_counter() - started, produced


def batched(decoder, tokens: list[list[int]], sampling) -> tuple[float, int]:
    counts = [0] * len(tokens)

    def work(i: int) -> None:
        counts[i] = len(list(decoder.generate(tokens[i], sampling)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(tokens))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sum(counts)


def at_once(n: int, args: argparse.Namespace) -> None:
    """This measurement with ``args``, ``n`` copies at once; their tables one after another."""
    argv = [part for gguf in args.gguf for part in ("--gguf", gguf)]
    argv += ["--sizes", args.sizes, "--tokens", str(args.tokens), "--threads", str(args.threads)]
    copies = [subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
              for _ in range(n)]
    for i, copy in enumerate(copies):
        out, _ = copy.communicate()
        print(f"-- copy {i + 1} of {n}, run at once --\n{out}", end="", flush=True)


def main() -> None:
    from fslm_edge.config import Sampling
    from fslm_edge.engine import BatchedDecoder, LoadedModel
    from fslm_edge.models import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", action="append", default=[], help="a GGUF file (repeat); default: the packaged one")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1, help="copies of the measurement run at once")
    args = parser.parse_args()
    if args.processes > 1:
        at_once(args.processes, args)
        return
    files = [Path(f) for f in args.gguf] or [resolve_model("smollm2-135m-instruct")]
    sizes = [int(x) for x in args.sizes.split(",")]
    sampling = Sampling(max_tokens=args.tokens, temperature=0.0)
    print(f"{args.tokens} tokens a sequence at most, greedy, {args.threads} thread(s); {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'file':<28} {'N':>3} {'alone tok/s':>12} {'batched tok/s':>14} {'speed-up':>9}")
    for path in files:
        model = LoadedModel(path, 2048, args.threads)
        decoder = BatchedDecoder(path, 2048, args.threads, slots=max(sizes))
        try:
            warm = prompts(model, 1)
            one_at_a_time(model, warm, sampling)
            batched(decoder, warm, sampling)
            for n in sizes:
                tokens = prompts(model, n)
                alone_s, alone_n = one_at_a_time(model, tokens, sampling)
                batch_s, batch_n = batched(decoder, tokens, sampling)
                alone_rate, batch_rate = alone_n / alone_s, batch_n / batch_s
                print(f"{path.name[:28]:<28} {n:>3} {alone_rate:>12.1f} {batch_rate:>14.1f} "
                      f"{batch_rate / alone_rate:>8.2f}x", flush=True)
        finally:
            decoder.close()
            model.close()


if __name__ == "__main__":
    main()
