#!/usr/bin/env python
"""Fuzz the fslm-edge CLI with hostile stack files, GGUF files and eval data.

Regenerates a corpus from ``--seed`` (outside the repository: a new temporary
folder unless ``--out``), then runs the real CLI on every case in a
subprocess, one at a time, with one llama.cpp thread and a timeout. Each run
is classified:

- ok: exit 0;
- handled: exit 1 or 2 with exactly one ``error:`` line on stderr and no traceback;
- unclear: any other non-zero exit without a traceback (e.g. several lines);
- traceback: a Python traceback on stderr;
- crash: killed by a signal (SIGABRT from a llama.cpp assert, SIGSEGV);
- hang: still running at the timeout.

Families: ``stack-info`` (``fslm-edge info`` on fuzzed stack files: deep
nesting, wrong types, huge ints, NaN/inf, NUL bytes, unknown keys, bad
references, a FIFO/directory/device as model or adapter), ``stack-run`` (a
subset through ``fslm-edge run ... --set '*.max_tokens=1'`` with fuzzed
``--set`` values), ``gguf-info``/``gguf-run`` (mutations of a tiny llama GGUF
with SmolLM2's tokenizer and of a shipped LoRA adapter: header fields, counts,
tensor descriptions, bytes; ``run`` only for files ``info`` accepts, since
that is where llama.cpp loads them) and ``eval`` (``fslm-edge eval`` of the
packaged model on fuzzed JSONL files).

    python scripts/fuzz.py --seed 1                  # default counts, a few minutes
    python scripts/fuzz.py --stacks 50 --ggufs 20 --evals 5 --out fuzz-corpus

The corpus stays in the output folder, so each failing case listed at the end
is reproduced by the command printed with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the raw GGUF writer the tests use

CLI = str(Path(sys.executable).parent / "fslm-edge")
BUILTIN = "smollm2-135m-instruct"
OUTCOMES = ("ok", "handled", "unclear", "traceback", "crash", "hang")


# -- running and classifying --------------------------------------------------------------------------------


@dataclass
class Result:
    family: str
    case: str
    command: list[str]
    outcome: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Tally:
    results: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.results.append(result)


def classify(proc_rc: int | None, stderr: str) -> tuple[str, str]:
    if proc_rc is None:
        return "hang", ""
    lines = [line for line in re.split(r"[\r\n]+", stderr) if line.strip()]
    if proc_rc < 0:
        cause = [line for line in lines if re.search(r"GGML_ASSERT|GGML_ABORT|Assertion|terminate called", line)]
        cause = cause or lines[-1:]
        return "crash", f"signal {signal.Signals(-proc_rc).name}; " + (cause[0][-200:] if cause else "")
    if "Traceback (most recent call last)" in stderr:
        return "traceback", (lines[-1][:200] if lines else "")
    if proc_rc == 0:
        return "ok", ""
    errors = [line for line in lines if line.startswith("error: ")]
    if proc_rc in (1, 2) and len(errors) == 1:
        return "handled", errors[0][:200]
    return "unclear", f"exit {proc_rc}: " + " | ".join(lines[:3])[:300]


def run_exec(args: list[str], timeout: float, cwd: Path) -> tuple[int | None, str]:
    """The installed ``fslm-edge`` in a new process (``--exec``)."""
    proc = subprocess.Popen([CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err.decode("utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session this run started
        proc.communicate()
        return None, ""


def run_forked(args: list[str], timeout: float, cwd: Path) -> tuple[int | None, str]:
    """The CLI's ``main`` in a forked child of this process, which imported it
    once: the same code and exit path as the installed command, without 0.4 s
    of imports per case. The child's stderr goes to a file, its exit status
    (or signal) comes back as from a subprocess."""
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0), os.dup2(null, 1), os.dup2(err.fileno(), 2)
                os.chdir(cwd)
                code = _cli_main(args)
            finally:
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None, ""
            time.sleep(0.01)
        err.seek(0)
        text = err.read().decode("utf-8", errors="replace")
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return rc, text


def _cli_main(args: list[str]) -> int:
    """Run ``fslm-edge ARGS`` as its console script does; the exit code."""
    import traceback

    from fslm_edge.cli import main as cli

    sys.argv = ["fslm-edge", *args]
    try:
        cli()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what the interpreter would print for an uncaught exception
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


# -- value generators ---------------------------------------------------------------------------------------


HUGE_INTS = [0, 1, -1, 2**31, 2**31 - 1, 2**32, 4294967296, 2147483648, 2**63 - 1, -(2**63), 10**30]
FLOATS = [math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 0.5]
STRINGS = ["", " ", "\0", "a\0b", "{input}", "{nope}", "{{", "}", "x" * 5000, "é✓\U0001f600", "\ud800x",
           "../../../../etc/passwd", "builtin:nope", "hf://a/b/c.gguf", "hf://x", "/dev/zero", "\n\n"]


def toml_str(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")  # a lone surrogate escape: invalid TOML on purpose
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return toml_str(str(value))


def toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else toml_str(key)


def deep(rng: random.Random, kind: str | None = None):
    depth = rng.choice([50, 500, 2000, 20000])
    kind = kind or rng.choice(["list", "table"])
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return "{a = " * depth + "1" + "}" * depth


def random_value(rng: random.Random, special: dict):
    kind = rng.randrange(10)
    if kind == 0:
        return rng.choice(HUGE_INTS)
    if kind == 1:
        return rng.choice(FLOATS)
    if kind == 2:
        return rng.choice(STRINGS)
    if kind == 3:
        return rng.choice(list(special.values()))
    if kind == 4:
        return [rng.choice([1, "a", 1.5, True, [], {}]) for _ in range(rng.randrange(4))]
    if kind == 5:
        return {"k": rng.choice([1, "v", [1]])}
    if kind == 6:
        return rng.random() < 0.5
    if kind == 7:
        return RawToml(deep(rng))
    return rng.randint(-5, 300)


class RawToml(str):
    """A value written into the TOML text as is (deep nesting, invalid syntax)."""


# -- stack files --------------------------------------------------------------------------------------------


STACK_KEYS = ["name", "description", "model", "context_size", "threads", "batch_size", "gpu_layers",
              "show_choices", "drop_bos"]
STAGE_KEYS = ["name", "template", "model", "adapter", "adapter_scale", "chat", "drop_bos", "system", "calculator",
              "samples", "select", "choices", "choices_from_input", "grammar", "json_schema", "max_tokens",
              "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "train"]


def base_stack(rng: random.Random) -> dict:
    stages = [{"name": "first", "template": "Question: {input}", "max_tokens": 1},
              {"name": "second", "template": "{first} then {input}", "max_tokens": 1, "chat": False}]
    return {"stack": {"name": "fuzz", "model": BUILTIN, "context_size": 256, "threads": 1},
            "stage": stages[: rng.choice([1, 2])]}


def render_stack(doc: dict) -> str:
    """TOML text: plain keys first (``stage = [1, 2]`` is a key, not tables), then the tables."""
    lines, tables = [], []
    for name, body in doc.items():
        if isinstance(body, list) and body and all(isinstance(item, dict) for item in body):
            for item in body:
                tables += [f"[[{toml_key(name)}]]", *_assignments(item), ""]
        elif isinstance(body, dict):
            tables += [f"[{toml_key(name)}]", *_assignments(body), ""]
        else:
            lines.append(f"{toml_key(name)} = {_value_text(body)}")
    return "\n".join(lines + [""] + tables) + "\n"


def _value_text(value) -> str:
    return value if isinstance(value, RawToml) else toml_value(value)


def _assignments(table: dict) -> list[str]:
    return [f"{toml_key(k)} = {_value_text(v)}" for k, v in table.items()]


def mutate_stack(rng: random.Random, doc: dict, special: dict) -> dict:
    stages = [s for s in doc["stage"] if isinstance(s, dict)] if isinstance(doc.get("stage"), list) else []
    if not isinstance(doc.get("stack"), dict):
        doc["stack"] = {"name": "replaced"} if rng.random() < 0.5 else doc.get("stack")
    stack = doc["stack"] if isinstance(doc["stack"], dict) else {}
    choice = rng.randrange(12)
    if choice == 0 and stages:  # a stage key gets a hostile value
        rng.choice(stages)[rng.choice(STAGE_KEYS)] = random_value(rng, special)
    elif choice == 1:
        stack[rng.choice(STACK_KEYS)] = random_value(rng, special)
    elif choice == 2:  # model / adapter references at FIFOs, directories, devices, NULs, corrupt files
        target = rng.choice([stack] + stages)
        key = rng.choice(["model", "adapter"]) if target is not stack else "model"
        target[key] = rng.choice(list(special.values()))
    elif choice == 3:  # unknown keys and tables
        rng.choice([stack] + stages)[rng.choice(["modle", "max_token", "x" * 300, "é", ""])] = 1
    elif choice == 4:
        doc["stage"] = rng.choice([[1, 2], "x", [], {"name": "a"}, [[]], RawToml(deep(rng, "list"))])
    elif choice == 5:
        doc["stack"] = rng.choice([1, "x", [], RawToml(deep(rng, "table"))])
    elif choice == 6 and stages:  # sizes the lead checks in config.py
        stage = rng.choice(stages)
        stage.update(rng.choice([{"samples": 2147483648}, {"max_tokens": 4294967296}, {"adapter_scale": math.nan},
                                 {"temperature": math.inf}, {"seed": -1}, {"stop": ["" for _ in range(3)]},
                                 {"choices": ["a"] * 100000}, {"samples": 50}]))
        if rng.random() < 0.3:
            stack["context_size"] = rng.choice([4294967296, 0, -5, 2**63 - 1, 15, 10**9])
    elif choice == 7 and stages:  # templates naming later or missing stages, braces
        rng.choice(stages)["template"] = rng.choice(["{second}", "{input", "{{input}}", "{}", "{0}", "{input!r}",
                                                     "{input:>99999999}", "{" * 5000, "\0{input}"])
    elif choice == 8 and stages:  # duplicate or reserved stage names
        rng.choice(stages)["name"] = rng.choice(["input", "stack", "first", "", "a b", "é", "x" * 5000])
    elif choice == 9 and stages:
        rng.choice(stages)["train"] = rng.choice([{"data": RawToml(deep(rng))}, {"rank": math.nan}, {"data": []},
                                                  {"data": [{"file": "\0"}]}, {"epochs": 1e308}, "x"])
    elif choice == 10 and stages:
        rng.choice(stages)["json_schema"] = rng.choice([{"type": "object"}, RawToml(deep(rng, "table")),
                                                        "/dev/zero", str(special["fifo"]), {"$ref": "#"}])
    else:
        doc[rng.choice(["extra", "stages", "Stack"])] = {"a": 1}
    return doc


def mutate_text(rng: random.Random, text: str) -> str:
    data = bytearray(text.encode("utf-8", errors="surrogatepass"))
    kind = rng.randrange(6)
    if kind == 0 and data:
        del data[rng.randrange(len(data)):]
    elif kind == 1:
        for _ in range(rng.randint(1, 10)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:
        data[rng.randrange(len(data) + 1):0] = rng.choice([b"\0", b"\xff\xfe", b"\xef\xbb\xbf", b"\r", b"[[",
                                                           b"=\n", b'"""', b"\\u0000"])
    elif kind == 3:
        data += b"\n[stack]\nname = 'again'\n"
    elif kind == 4:
        data = bytearray(b"\xef\xbb\xbf") + data  # a BOM
    else:
        data += ("\n# " + "x" * rng.choice([10, 100000]) + "\n").encode()
    return bytes(data).decode("utf-8", errors="surrogateescape")


SET_VALUES = ["*.max_tokens=1", "stack.threads=1", "*.temperature=nan", "*.samples=2147483648",
              "stack.context_size=4294967296", "*.adapter_scale=nan", "*.stop=" + "[" * 3000 + "]" * 3000,
              "*.k=v", "*.stop=[\"\\u0000\"]", "a.b.c.d.e=1", "=", "stack=1", "*.=1", "first.max_tokens=-1",
              "*.template={nope}", "*.model=/dev/zero", "*.json_schema={}", "stack.name=" + "x" * 100000,
              "*.seed=18446744073709551616", "*.top_k=1e400", "*.choices=[1,2]", "*.max_tokens=" + "9" * 5000]


# -- GGUF mutations -----------------------------------------------------------------------------------------


def gguf_values(rng: random.Random):
    from gguf_fixtures import ARRAY, STRING

    kind = rng.randrange(8)
    if kind == 0:
        vtype = rng.choice([0, 1, 2, 3, 4, 5, 10, 11])
        bits = {0: 8, 1: 8, 2: 16, 3: 16, 4: 32, 5: 32, 10: 64, 11: 64}[vtype]
        value = rng.choice(HUGE_INTS + [rng.randrange(-3, 1025)]) % (1 << bits)
        if vtype in (1, 3, 5, 11) and value >= 1 << (bits - 1):
            value -= 1 << bits
        return vtype, value, None
    if kind == 1:
        vtype, value = rng.choice([6, 12]), rng.choice(FLOATS)
        return vtype, (3e38 if vtype == 6 and math.isfinite(value) and abs(value) > 3e38 else value), None
    if kind == 2:
        return 7, rng.random() < 0.5, None
    if kind == 3:
        return STRING, rng.choice(STRINGS + ["none", "no_vocab", "warp", "llama", "adapter", "model", "gpt2"]), None
    if kind == 4:
        return ARRAY, [rng.randrange(0, 1000) for _ in range(rng.randrange(0, 40))], 4
    if kind == 5:
        return ARRAY, [rng.choice(STRINGS) for _ in range(rng.randrange(0, 5))], STRING
    if kind == 6:
        return STRING, "{% for m in messages %}" + rng.choice(["{{ raise_exception('x') }}", "{% for %}",
                                                               "{{ 'x' * 100000000 }}", "{{ m.content }}"]) + \
            "{% endfor %}", None
    return ARRAY, struct.pack("<IQ", ARRAY, 1) * rng.choice([1, 5, 2000]) + struct.pack("<IQ", 4, 0), None


SENSITIVE = ["llama.block_count", "llama.embedding_length", "llama.context_length", "llama.attention.head_count",
             "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.rope.dimension_count",
             "llama.expert_count", "llama.expert_used_count", "llama.rope.scaling.type", "llama.vocab_size",
             "llama.attention.layer_norm_rms_epsilon", "llama.nextn_predict_layers", "general.architecture",
             "general.alignment", "general.type", "general.file_type", "tokenizer.ggml.model",
             "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
             "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template",
             "tokenizer.ggml.pre", "adapter.lora.alpha", "adapter.type", "general.description"]


def mutate_gguf(rng: random.Random, kvs: list, tensors: list, is_adapter: bool) -> tuple[bytes, str]:
    """A mutated GGUF's bytes and a one-line description of the mutation."""
    from gguf_fixtures import KV, RawTensor, gguf_bytes, set_kv

    kvs, tensors = list(kvs), list(tensors)
    kind = rng.randrange(11)
    counts: dict = {}
    if kind <= 2:
        key = rng.choice(SENSITIVE if rng.random() < 0.8 else [kv.key for kv in kvs])
        vtype, value, sub = gguf_values(rng)
        kvs = set_kv(kvs, key, vtype, value, sub)
        what = f"set {key} = {type(value).__name__} {str(value)[:40]!r} (type {vtype})"
    elif kind == 3:
        key = rng.choice([kv.key for kv in kvs])
        kvs = set_kv(kvs, key, None)
        what = f"removed {key}"
    elif kind == 4 and tensors:
        index = rng.randrange(len(tensors))
        tensor = tensors[index]
        change = rng.randrange(6)
        if change == 0:
            del tensors[index]
            what = f"removed tensor {tensor.name}"
        elif change == 1:
            tensors.append(tensor)
            what = f"duplicated tensor {tensor.name}"
        elif change == 2:
            shape = tuple(rng.choice([0, 1, 3, 2**32, 2**63, d * 2]) if rng.random() < 0.5 else d
                          for d in tensor.shape) + ((rng.choice([1, 2]),) if rng.random() < 0.3 else ())
            tensors[index] = RawTensor(tensor.name, shape, tensor.ttype, tensor.data)
            what = f"tensor {tensor.name} shape {tensor.shape} -> {shape}"
        elif change == 3:
            ttype = rng.randrange(0, 45)
            tensors[index] = RawTensor(tensor.name, tensor.shape, ttype, tensor.data)
            what = f"tensor {tensor.name} type {tensor.ttype} -> {ttype}"
        elif change == 4:
            name = rng.choice(["blk.999.attn_q.weight", "blk.-1.x", "", "x" * 100, "blk.2.attn_q.weight",
                               tensor.name + ".lora_a"])
            tensors[index] = RawTensor(name, tensor.shape, tensor.ttype, tensor.data)
            what = f"tensor {tensor.name} renamed {name[:40]!r}"
        else:
            data = bytearray(tensor.data)
            for _ in range(8):
                if tensor.ttype in (0, 1) and len(data) >= 4:
                    at = rng.randrange(0, len(data) - 3) // 4 * 4
                    data[at:at + 4] = struct.pack("<f", rng.choice([math.nan, math.inf])) if tensor.ttype == 0 \
                        else b"\x00\x7c\x00\x7e"  # f16 inf, NaN
            tensors[index] = RawTensor(tensor.name, tensor.shape, tensor.ttype, bytes(data))
            what = f"NaN/inf written into tensor {tensor.name}"
    elif kind == 5:
        counts["n_tensors"] = rng.choice([0, len(tensors) + 1, max(len(tensors) - 1, 0), 2**40, 2**64 - 1])
        what = f"n_tensors = {counts['n_tensors']}"
    elif kind == 6:
        counts["n_kv"] = rng.choice([0, len(kvs) + 1, len(kvs) - 1, 2**40, 2**64 - 1])
        what = f"n_kv = {counts['n_kv']}"
    elif kind == 7:
        align = rng.choice([0, 1, 3, 16, 64, 4096, 2**31])
        kvs = set_kv(kvs, "general.alignment", 4, align)
        counts["alignment"] = align if align and not align & (align - 1) and align <= 4096 else 32
        what = f"general.alignment = {align}"
    elif kind == 8:
        kvs.append(KV(rng.choice([kv.key for kv in kvs]), 4, 1))
        what = "a duplicate key"
    elif kind == 9:
        size = rng.choice([1 << 10, 1 << 20, 50 << 20]) if rng.random() < 0.1 else rng.choice([1 << 10, 1 << 16])
        kvs = set_kv(kvs, rng.choice(["general.description", "tokenizer.chat_template", "general.name"]), 8,
                     "d" * size)
        what = f"a string of {size} bytes"
    else:
        data = bytearray(gguf_bytes(kvs, tensors))
        header = min(len(data), 4096 if is_adapter else 2 << 20)
        flips = rng.randint(1, 16)
        for _ in range(flips):
            data[rng.randrange(header)] = rng.randrange(256)
        cut = rng.randrange(len(data)) if rng.random() < 0.3 else None
        return bytes(data[:cut]), f"{flips} random bytes in the header" + (f", cut at {cut}" if cut else "")
    return gguf_bytes(kvs, tensors, **counts), what


# -- eval data ----------------------------------------------------------------------------------------------


def eval_rows(rng: random.Random) -> bytes:
    mc = {"question": "Which is red?", "choices": ["sky", "blood"], "answer": 1}
    gen = {"question": "What is 2 plus 2?", "answer": "4"}
    kind = rng.randrange(12)
    row = dict(rng.choice([mc, gen]))
    if kind == 0:
        return b""
    if kind == 1:
        return b"\n\n  \n"
    if kind == 2:
        row[rng.choice(["question", "choices", "answer", "context"])] = random_value(rng, {"x": "x"})
        return (json.dumps(row, allow_nan=True) + "\n").encode() * 3
    if kind == 3:
        return b"[" * 100000 + b"]" * 100000 + b"\n"
    if kind == 4:
        return b'{"question": "\xff\xfe bad utf-8", "answer": "1"}\n'
    if kind == 5:
        return b'{"question": "a\\u0000b", "choices": ["x\\u0000", "y"], "answer": 0}\n' * 2
    if kind == 6:
        return json.dumps({**row, "question": "q" * (4 << 20)}).encode() + b"\n"
    if kind == 7:
        return rng.choice([b"1\n", b'"x"\n', b"null\n", b"[1,2]\n", b"{\n", b"{}\n", b'{"answer": NaN}\n'])
    if kind == 8:
        return json.dumps({**mc, "answer": rng.choice([-1, 2, 10**30, True, 1.5, "1", None])}).encode() + b"\n"
    if kind == 9:
        return json.dumps({**mc, "choices": rng.choice([[], ["a"], ["a"] * 100000, [1, 2], ["", ""], "ab"])}
                          ).encode() + b"\n"
    if kind == 10:
        return b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\r\n" + json.dumps(row).encode()
    return b'{"question": "q", "question": "dup", "answer": "1"}\n' + json.dumps(row).encode()[:-3] + b"\n"


# -- the corpus and the runs --------------------------------------------------------------------------------


def special_paths(out: Path, bad_gguf: Path) -> dict:
    fifo, folder = out / "fifo.gguf", out / "folder.gguf"
    if not fifo.exists():
        os.mkfifo(fifo)
    folder.mkdir(exist_ok=True)
    return {"fifo": str(fifo), "dir": str(folder), "dev": "/dev/zero", "null": "/dev/null",
            "missing": str(out / "missing.gguf"), "nul": "a\0b.gguf", "corrupt": str(bad_gguf),
            "empty": "", "builtin_bad": "builtin:nope", "relative": "../../x.gguf"}


def stack_cases(rng: random.Random, count: int, out: Path, special: dict):
    folder = out / "stacks"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        doc = base_stack(rng)
        before = _flat(doc)
        for _ in range(rng.choice([1, 1, 2, 3])):
            doc = mutate_stack(rng, doc, special)
        after = _flat(doc)
        changes = [f"{key} = {after.get(key, '(gone)')[:50]}" for key in after.keys() | before.keys()
                   if after.get(key) != before.get(key)]
        text = render_stack(doc)
        if rng.random() < 0.25:
            text = mutate_text(rng, text)
            changes.append("text mutated")
        path = folder / f"stack_{index:04d}.toml"
        path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
        yield path, "; ".join(sorted(changes))[:160]


def _flat(value, prefix: str = "") -> dict[str, str]:
    """Dotted paths -> repr, to name what a mutation changed."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()} or \
            {prefix.rstrip("."): "{}"}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): repr(value)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="corpus folder (default: a new temporary folder)")
    parser.add_argument("--stacks", type=int, default=800, help="fuzzed stack files (fslm-edge info)")
    parser.add_argument("--runs", type=int, default=60, help="of those, run with --set values (fslm-edge run)")
    parser.add_argument("--ggufs", type=int, default=250, help="GGUF mutations")
    parser.add_argument("--evals", type=int, default=50, help="eval data files (fslm-edge eval)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds before a run or eval counts as a hang (info: at most 15; it takes < 2 s)")
    parser.add_argument("--show", type=int, default=5, help="failing cases listed per family")
    parser.add_argument("--exec", action="store_true",
                        help="start the installed fslm-edge for every case (slower) instead of forking this process")
    args = parser.parse_args()

    out = (args.out or Path(tempfile.mkdtemp(prefix="fslm-fuzz-"))).resolve()
    if out == REPO or REPO in out.parents:
        parser.error("--out must be outside the repository")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    # before fslm_edge is imported here: the forked runs inherit it, the exec'd ones too
    os.environ.update(FSLM_EDGE_CACHE=str(out / "cache"), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    runner = run_exec if args.exec else run_forked
    tally = Tally()
    started = time.monotonic()

    def attempt(family: str, case: str, cli_args: list[str], timeout: float | None = None) -> str:
        began = time.monotonic()
        rc, err = runner(cli_args, timeout or args.timeout, out)
        outcome, detail = classify(rc, err)
        tally.add(Result(family, case, cli_args, outcome, detail, time.monotonic() - began))
        return outcome

    from gguf_fixtures import gguf_bytes, read_kvs, read_tensors, tiny_llama_parts

    from fslm_edge.models import resolve_model

    base = resolve_model(BUILTIN)
    tiny_kvs, tiny_tensors = tiny_llama_parts(base)
    adapter_src = REPO / "stacks" / "adapters" / "qa" / "recall" / "recall.lora.gguf"
    adapter_kvs, adapter_tensors = read_kvs(adapter_src), read_tensors(adapter_src)
    corrupt = out / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\xff" * 60)
    special = special_paths(out, corrupt)

    print(f"corpus: {out}", flush=True)
    threads = ["--set", "stack.threads=1"]
    for index, (path, what) in enumerate(stack_cases(rng, args.stacks, out, special)):
        attempt("stack-info", f"{path.name} ({what})", ["info", str(path)], timeout=min(15.0, args.timeout))
        if index < args.runs:
            sets = ["--set", "*.max_tokens=1", *threads]
            for value in rng.sample(SET_VALUES, rng.randint(0, 3)):
                sets += ["--set", value]
            attempt("stack-run", f"{path.name} ({what})", ["run", str(path), "hi", *sets])
        if index and index % 200 == 0:
            print(f"  {index} stack files, {time.monotonic() - started:.0f} s", flush=True)

    gguf_dir = out / "gguf"
    gguf_dir.mkdir(exist_ok=True)
    for index in range(args.ggufs):
        is_adapter = rng.random() < 0.3
        kvs, tensors = (adapter_kvs, adapter_tensors) if is_adapter else (tiny_kvs, tiny_tensors)
        data, what = mutate_gguf(rng, kvs, tensors, is_adapter)
        model = gguf_dir / f"case_{index:04d}.gguf"
        model.write_bytes(data)
        (gguf_dir / f"case_{index:04d}.txt").write_text(what + "\n")
        stack = gguf_dir / f"case_{index:04d}.toml"
        reference = f'model = {toml_str(BUILTIN)}' if is_adapter else f"model = {toml_str(str(model))}"
        adapter = f"adapter = {toml_str(str(model))}\n" if is_adapter else ""
        stack.write_text(f'[stack]\nname = "g"\n{reference}\ncontext_size = 128\nthreads = 1\n\n'
                         f'[[stage]]\nname = "a"\ntemplate = "{{input}}"\nmax_tokens = 1\n{adapter}')
        case = f"{model.name} ({what})"
        if attempt("gguf-info", case, ["info", str(stack)], timeout=min(15.0, args.timeout)) == "ok":
            attempt("gguf-run", case, ["run", str(stack), "hi", "--set", "*.max_tokens=1", *threads])
        if tally.results[-1].outcome in ("ok", "handled"):
            model.unlink()  # keep only the failing files (each up to 7 MB)
        if index and index % 100 == 0:
            print(f"  {index} GGUF files, {time.monotonic() - started:.0f} s", flush=True)
    tiny_ok = gguf_dir / "tiny_valid.gguf"
    tiny_ok.write_bytes(gguf_bytes(tiny_kvs, tiny_tensors))

    eval_dir = out / "eval"
    eval_dir.mkdir(exist_ok=True)
    for index in range(args.evals):
        data_file = eval_dir / f"data_{index:03d}.jsonl"
        data_file.write_bytes(eval_rows(rng))
        fmt = rng.choice([[], ["--format", "mc"], ["--format", "gen"]])
        attempt("eval", data_file.name, ["eval", f"builtin:{BUILTIN}", "--data", str(data_file), "--limit", "2",
                                         "--threads", "1", "--max-new-tokens", "1", "--no-cache", *fmt,
                                         "--out", str(eval_dir / f"result_{index:03d}.json")])

    return report(tally, args.show, time.monotonic() - started, out)


def report(tally: Tally, show: int, seconds: float, out: Path) -> int:
    by_family: dict[str, Counter] = defaultdict(Counter)
    failures: dict[str, list[Result]] = defaultdict(list)
    for result in tally.results:
        by_family[result.family][result.outcome] += 1
        if result.outcome not in ("ok", "handled"):
            failures[result.family].append(result)
    seconds_by_family = Counter()
    for result in tally.results:
        seconds_by_family[result.family] += result.seconds
    print(f"\n{'family':<12}{'tried':>7}" + "".join(f"{name:>11}" for name in OUTCOMES) + f"{'seconds':>9}")
    for family, counts in by_family.items():
        print(f"{family:<12}{sum(counts.values()):>7}" + "".join(f"{counts[name]:>11}" for name in OUTCOMES)
              + f"{seconds_by_family[family]:>9.0f}")
    bad = 0
    for family, results in failures.items():
        kinds = Counter(r.outcome for r in results)
        bad += sum(kinds[k] for k in ("traceback", "crash", "hang"))
        print(f"\n{family}: {len(results)} not handled ({', '.join(f'{k} {v}' for k, v in kinds.items())})")
        seen, listed = set(), 0
        for result in sorted(results, key=lambda r: OUTCOMES.index(r.outcome), reverse=True):
            kind = (result.outcome, re.sub(r"\d+", "N", result.detail or result.case.split(" ", 1)[-1])[:80])
            if kind in seen or listed == show:
                continue  # one case per distinct failure, so a common one does not hide the others
            seen.add(kind)
            listed += 1
            print(f"  [{result.outcome}] {result.case}: {result.detail}")
            command = shlex.join([CLI, *result.command])
            print(f"    (cd {shlex.quote(str(out))} && {command[:400]})")
    with open(out / "results.jsonl", "w") as handle:  # every case, for grep
        for result in tally.results:
            handle.write(json.dumps({"family": result.family, "case": result.case, "outcome": result.outcome,
                                     "detail": result.detail, "command": [CLI, *result.command][:12]}) + "\n")
    print(f"\n{len(tally.results)} runs in {seconds:.0f} s; corpus and results.jsonl in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
