"""``fslm-edge serve`` under load, on the shipped qa stack. Prints tables.

    python benchmarks/bench_server.py [--stack stacks/qa.toml] [--requests 16] [--set KEY=VALUE ...]
        [--servers workers=1,workers=2,parallel=4] [--no-overhead]

1. throughput: requests/s and p50/p95 latency for 1, 2, 4 and 8 concurrent
   clients (plain HTTP, ``stream: false``; with ``--parallel``, "rows" is the
   mean number of requests one llama.cpp decode held), for each server in ``--servers``:
   ``workers=1`` (llama.cpp's default threads), ``workers=2`` (one thread
   each), ``parallel=4`` (four requests at once decoded together in one batch,
   on the default threads; ``parallel=4:stack.threads=2`` on two;
   ``parallel=4:merge-adapters:stack.threads=1`` with ``--merge-adapters``), each in a
   fresh server process; then aggregate
   throughput at 4 clients against one client's (target >= 2x);
2. overhead: the same questions one at a time through HTTP (``--workers 1``)
   and through ``Stack.run`` in this process with the same settings,
   interleaved question by question so drifts in machine load cancel out
   (target: HTTP under 5% slower).

Run it alone on the machine: it takes every core.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "Why is the sky blue?", "What do plants need to grow?", "Why do we have seasons?",
    "What makes ice float on water?", "Why do cats purr?", "How do bees make honey?",
    "What causes thunder?", "Why does bread rise?", "How does a compass work?",
    "Why do leaves change colour in autumn?", "What is the tallest animal?", "Why is the sea salty?",
    "How do birds fly?", "What makes a rainbow?", "Why do we sleep?", "How does soap clean?",
]


class Server:
    def __init__(self, stack: str, how: str, sets: list[str]):
        server, *own = how.split(":")  # "parallel=4:stack.threads=2": this server's own settings too
        flag, _, count = server.partition("=")
        # "parallel=4:merge-adapters:merge-type=q8_0:stack.threads=1": serve flags (with a value or not),
        # and settings (a dotted key)
        flags: list[str] = []
        for item in own:
            key, _, value = item.partition("=")
            if "." in key:
                sets = sets + [item]
            else:
                flags += [f"--{key}", value] if value else [f"--{key}"]
        args = ["serve", stack, "--port", "0", f"--{flag}", count, "--queue", "64", "--timeout", "600", *flags]
        for item in sets:
            args += ["--set", item]
        self.proc = subprocess.Popen([sys.executable, "-c", "from fslm_edge.cli import main; main()", *args],
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        ready = threading.Event()
        self.port = 0

        def read() -> None:
            for line in self.proc.stderr:
                found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
                if found:
                    self.port = int(found.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(300)
        if not self.port:
            raise SystemExit("the server did not start")
        models = self.get("/v1/models")["data"]
        self.model = models[0]["id"]

    def get(self, path: str) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())

    def ask(self, question: str) -> tuple[float, int]:
        """Seconds for one answer and the tokens its stages generated."""
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": question}]})
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        seconds = time.perf_counter() - started
        connection.close()
        if response.status != 200:
            raise SystemExit(f"request failed: {response.status} {answer}")
        return seconds, answer["usage"]["completion_tokens"]

    def decodes(self) -> tuple[int, int]:
        """``--parallel``: llama.cpp decodes so far and the sequences they held (else zeros)."""
        health = self.get("/health")["models"][self.model]
        return health.get("decodes", 0), health.get("decoded_rows", 0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_level(server: Server, clients: int, requests: int) -> dict:
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]
    before = server.decodes()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(server.ask, questions))
    wall = time.perf_counter() - started
    after = server.decodes()
    latencies = [seconds for seconds, _ in results]
    steps = after[0] - before[0]
    return {"clients": clients, "requests": requests, "req_s": requests / wall,
            "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95),
            "tokens_s": sum(tokens for _, tokens in results) / wall,
            "rows_per_decode": (after[1] - before[1]) / steps if steps else None}


def throughput(stack: str, how: str, levels: list[int], requests: int, sets: list[str]) -> list[dict]:
    server = Server(stack, how, sets)
    try:
        server.ask(QUESTIONS[0])  # warm-up: first decode, page cache
        return [load_level(server, clients, max(requests, 2 * clients)) for clients in levels]
    finally:
        server.stop()


def overhead(stack_path: str, sets: list[str], rounds: int) -> dict:
    """Per question: Stack.run in this process, then the same question over
    HTTP (the order alternates); both idle while the other runs."""
    from fslm_edge import Stack
    from fslm_edge.config import parse_override_items

    server = Server(stack_path, "workers=1", sets)
    direct_s, http_s, direct_tokens, http_tokens = [], [], 0, 0
    try:
        with Stack.load(stack_path, parse_override_items(sets) or None) as stack:
            stack.run(QUESTIONS[0])
            server.ask(QUESTIONS[0])
            for index, question in enumerate(QUESTIONS[:rounds]):
                for which in (("direct", "http") if index % 2 == 0 else ("http", "direct")):
                    if which == "direct":
                        started = time.perf_counter()
                        result = stack.run(question)
                        direct_s.append(time.perf_counter() - started)
                        direct_tokens += sum(s.stats.generated_tokens for s in result.stages)
                    else:
                        seconds, tokens = server.ask(question)
                        http_s.append(seconds)
                        http_tokens += tokens
    finally:
        server.stop()
    return {"questions": len(direct_s), "direct_s": sum(direct_s), "http_s": sum(http_s),
            "direct_tokens": direct_tokens, "http_tokens": http_tokens,
            "overhead": sum(http_s) / sum(direct_s) - 1,
            "overhead_per_token": (sum(http_s) / http_tokens) / (sum(direct_s) / direct_tokens) - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default=str(ROOT / "stacks" / "qa.toml"))
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least 2x clients)")
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--servers", default="workers=1,workers=2,parallel=4",
                        help="servers to measure, comma-separated: workers=N or parallel=N, each optionally "
                             "followed by :KEY=VALUE settings of its own (parallel=4:stack.threads=2)")
    parser.add_argument("--overhead-questions", type=int, default=16)
    parser.add_argument("--no-overhead", action="store_true", help="skip the HTTP overhead measurement")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    table: dict[str, list[dict]] = {}
    print(f"stack {args.stack}, {args.requests} requests per level, settings {args.sets or 'as shipped'}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    width = max(len(h) for h in args.servers.split(","))
    print(f"{'server':>{width}} {'clients':>7} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'tok/s':>7} {'rows':>5}")
    servers = args.servers.split(",")
    for how in servers:
        table[how] = throughput(args.stack, how, levels, args.requests, args.sets)
        for row in table[how]:
            rows = "-" if row["rows_per_decode"] is None else f"{row['rows_per_decode']:.2f}"
            print(f"{how:>{width}} {row['clients']:>7} {row['req_s']:>7.2f} {row['p50_s']:>7.2f} {row['p95_s']:>7.2f} "
                  f"{row['tokens_s']:>7.1f} {rows:>5}", flush=True)
    base = servers[0]
    one_client = next(r for r in table[base] if r["clients"] == 1)["req_s"]
    for how, rows in table.items():
        four = next((r for r in rows if r["clients"] == 4), None)
        own = next((r for r in rows if r["clients"] == 1), None)
        if four and own:
            name, first = how.replace("=", " ", 1), base.replace("=", " ", 1)
            print(f"4 clients, --{name}: {four['req_s']:.2f} req/s = {four['req_s'] / one_client:.2f}x "
                  f"one client on --{first} ({one_client:.2f} req/s), "
                  f"{four['req_s'] / own['req_s']:.2f}x one client on the same server (target >= 2x)")
    if args.no_overhead:
        return
    result = overhead(args.stack, args.sets, args.overhead_questions)
    print(f"overhead, {result['questions']} questions one at a time: Stack.run {result['direct_s']:.2f} s "
          f"({result['direct_tokens']} tokens), HTTP {result['http_s']:.2f} s ({result['http_tokens']} tokens): "
          f"{100 * result['overhead']:+.1f}% ({100 * result['overhead_per_token']:+.1f}% per generated token; "
          "target < 5%)")


if __name__ == "__main__":
    main()
