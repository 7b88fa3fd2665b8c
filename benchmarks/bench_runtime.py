"""Runtime benchmarks (issue: stack runtime). Prints a table of figures.

    python benchmarks/bench_runtime.py [--rounds 5] [--tokens 128]

1. overhead: decode tokens/s of a stage through fslm-edge against raw
   llama-cpp-python (create_completion, streaming) on the same loaded model,
   prompt and settings, interleaved round by round (target ratio >= 0.98);
2. adapter swap: time to switch the active LoRA between stages (target < 5 ms);
3. peak RSS of a 3-adapter-stage stack on one base vs the single model,
   each in a fresh process (target <= 1.1x);
4. cold start of stacks/qa.toml (Stack.load to first token) and the
   end-to-end latency of one question, in a fresh process (target < 1 s);
5. a shared machine: decode tokens/s with one other process keeping a core
   busy, against the quiet figure, same run, at the default thread count and
   at one thread per core (target >= 0.5x at the default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Count from 1 to 1000, separated by commas: 1, 2, 3,"


def _stack_file(folder: Path, body: str) -> Path:
    path = folder / "bench.toml"
    path.write_text('[stack]\nname = "bench"\ncontext_size = 1024\n\n' + textwrap.dedent(body))
    return path


def overhead(rounds: int, tokens: int) -> dict:
    from fslm_edge import Stack, StageEnd

    body = f'[[stage]]\nname = "s"\ntemplate = "{PROMPT}"\nchat = false\nmax_tokens = {tokens}\n' \
           'temperature = 0.0\nrepeat_penalty = 1.0\n'
    with tempfile.TemporaryDirectory() as tmp, Stack.load(_stack_file(Path(tmp), body)) as stack:
        llm = stack.models[0].llm
        ours, raw = [], []
        for index in range(rounds):  # alternate which goes first, so drifts in machine load cancel
            for which in (("ours", "raw") if index % 2 == 0 else ("raw", "ours")):
                llm.reset()
                if which == "ours":
                    end = next(e for e in stack.stream("go") if isinstance(e, StageEnd))
                    ours.append(end.stats.tokens_per_s)
                else:
                    raw.append(_raw_tokens_per_s(llm, tokens))
    ratios = [a / b for a, b in zip(ours, raw)]
    return {"fslm_tok_s": statistics.median(ours), "raw_tok_s": statistics.median(raw),
            "ratio": statistics.median(ratios), "rounds": rounds, "tokens": tokens}


def _raw_tokens_per_s(llm, tokens: int) -> float:
    """Same measure as StageStats.tokens_per_s: tokens after the first / time after the first."""
    first = None
    count = 0
    for _chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, top_k=40, top_p=0.95,
                                        min_p=0.05, repeat_penalty=1.0, stream=True):
        count += 1
        if first is None:
            first = time.perf_counter()
    return (count - 1) / (time.perf_counter() - first)


def adapter_swap(n: int = 200) -> dict:
    from fslm_edge.convert.gguf_out import write_random_lora
    from fslm_edge.engine import ModelPool
    from fslm_edge.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_random_lora(Path(tmp) / f"{i}.gguf", seed=i) for i in range(3)]
        pool = ModelPool(1024, 2)
        model = pool.get(resolve_model("smollm2-135m-instruct"))
        for path in paths:
            model.add_adapter(path)
        times = []
        for i in range(n):
            start = time.perf_counter()
            model.use_adapter(paths[i % 3])
            times.append(time.perf_counter() - start)
        pool.close()
    return {"swap_ms_median": statistics.median(times) * 1000, "swap_ms_max": max(times) * 1000, "swaps": n}


RSS_SCRIPT = """
import json, resource, sys, tempfile, pathlib
sys.path.insert(0, {root!r})
from fslm_edge.convert.gguf_out import write_random_lora
from fslm_edge import Stack
tmp = pathlib.Path(tempfile.mkdtemp())
n = int(sys.argv[1])
stages = ""
for i in range(n):
    adapter = f'adapter = "{{write_random_lora(tmp / f"{{i}}.gguf", seed=i)}}"' if n > 1 else ""
    stages += f'[[stage]]\\nname = "s{{i}}"\\ntemplate = "{{{{input}}}}"\\nmax_tokens = 16\\n{{adapter}}\\n\\n'
(tmp / "s.toml").write_text('[stack]\\nname = "rss"\\ncontext_size = 1024\\n\\n' + stages)
with Stack.load(tmp / "s.toml") as stack:
    stack.run("Tell me about rivers.")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{"models": len(stack.models), "rss_mb": peak_mb}}))
"""


def peak_rss() -> dict:
    script = RSS_SCRIPT.format(root=str(ROOT))
    out = {}
    for n in (1, 3):
        done = subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True, check=True)
        out[n] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"single_mb": out[1]["rss_mb"], "three_adapter_stages_mb": out[3]["rss_mb"],
            "models_loaded": out[3]["models"], "ratio": out[3]["rss_mb"] / out[1]["rss_mb"]}


COLD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from fslm_edge import Stack, TextDelta, StackResult
t1 = time.perf_counter()
stack = Stack.load({stack!r})
first = None
for event in stack.stream("Why is the sky blue?"):
    if first is None and isinstance(event, TextDelta):
        first = time.perf_counter()
    if isinstance(event, StackResult):
        result = event
end = time.perf_counter()
stack.close()
print(json.dumps({{"import_s": t1 - t0, "load_to_first_token_s": first - t1, "end_to_end_s": end - t1,
                  "tokens_per_stage": {{s.name: s.stats.generated_tokens for s in result.stages}}}}))
"""


BUSY_LOOP = "while True:\n    pass\n"


def _decode_tokens_per_s(threads: int, tokens: int) -> float:
    from fslm_edge import Stack, StageEnd

    body = f'[[stage]]\nname = "s"\ntemplate = "{PROMPT}"\nchat = false\nmax_tokens = {tokens}\n' \
           'temperature = 0.0\nrepeat_penalty = 1.0\n'
    with tempfile.TemporaryDirectory() as tmp, Stack.load(_stack_file(Path(tmp), body),
                                                          {"stack.threads": threads}) as stack:
        next(e for e in stack.stream("go") if isinstance(e, StageEnd))  # warm up
        stack.models[0].reset()
        return next(e for e in stack.stream("go") if isinstance(e, StageEnd)).stats.tokens_per_s


def shared_machine(tokens: int) -> dict:
    """Quiet, then with one busy process, at the default and at one thread per core."""
    import os

    from fslm_edge.config import default_threads

    cores = len(os.sched_getaffinity(0))
    settings = {"default": default_threads(), "per_core": cores}
    quiet = {name: _decode_tokens_per_s(n, tokens) for name, n in settings.items()}
    busy_process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)
        busy = {name: _decode_tokens_per_s(n, tokens // 2 if name == "per_core" else tokens)
                for name, n in settings.items()}
    finally:
        busy_process.kill()
        busy_process.wait()
    return {"cores": cores, "threads": settings, "quiet_tok_s": quiet, "busy_tok_s": busy,
            "ratio": {name: busy[name] / quiet[name] for name in settings}}


def cold_start() -> dict:
    script = COLD_SCRIPT.format(root=str(ROOT), stack=str(ROOT / "stacks" / "qa.toml"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    results = {
        "overhead": overhead(args.rounds, args.tokens),
        "adapter_swap": adapter_swap(),
        "peak_rss": peak_rss(),
        "cold_start": cold_start(),
        "shared_machine": shared_machine(args.tokens),
    }
    o, a, r, c, m = (results[k] for k in ("overhead", "adapter_swap", "peak_rss", "cold_start", "shared_machine"))
    print(f"overhead      fslm-edge {o['fslm_tok_s']:.1f} tok/s vs raw llama-cpp-python {o['raw_tok_s']:.1f} tok/s"
          f" -> ratio {o['ratio']:.3f} (target >= 0.98; median of per-round ratios, {o['rounds']} interleaved rounds, "
          f"{o['tokens']} tokens)")
    print(f"adapter swap  median {a['swap_ms_median']:.3f} ms, max {a['swap_ms_max']:.3f} ms over {a['swaps']} "
          "swaps (target < 5 ms)")
    print(f"peak RSS      single model {r['single_mb']:.0f} MB, 3 adapter stages {r['three_adapter_stages_mb']:.0f} MB"
          f" ({r['models_loaded']} model loaded) -> ratio {r['ratio']:.3f} (target <= 1.1)")
    print(f"cold start    qa.toml load to first token {c['load_to_first_token_s']:.3f} s (target < 1 s; "
          f"python imports {c['import_s']:.3f} s more); end to end {c['end_to_end_s']:.2f} s; "
          f"tokens per stage {c['tokens_per_stage']}")
    for name, label in (("default", "default"), ("per_core", "one per core")):
        print(f"shared machine {label} ({m['threads'][name]} threads on {m['cores']} cores): quiet "
              f"{m['quiet_tok_s'][name]:.1f} tok/s, one core busy {m['busy_tok_s'][name]:.1f} tok/s -> "
              f"{m['ratio'][name]:.2f}x" + (" (target >= 0.5x)" if name == "default" else ""))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
