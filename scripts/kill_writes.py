"""SIGKILL export-lora / merge / quantize inside their write window, many
times, and count what the kills leave behind.

    python scripts/kill_writes.py [--runs 50] [--seed 0] [--keep DIR]

On the tiny llama model the build tests use (tests/build_fixtures.py) and a
random PEFT adapter for it. Each command is first timed once from its first
temp file to its exit (the write window); every trial then starts the
command, waits for its first temp file and kills it at a uniformly random
moment of that window. The next trial writes the same target, so what a
killed run leaves must be cleaned by a later one. After the kills each
command runs once to completion; then the folder is checked.

Prints ``kills / stray temp files / artifacts without manifest`` (the last
two should be 0) and how many manifests disagree with their artifact.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from build_fixtures import tiny_gguf  # noqa: E402
from write_fixtures import (  # noqa: E402
    artifacts_without_manifest,
    cli_command,
    cli_env,
    stray_temp_files,
    tiny_peft_adapter,
)

from fslm_edge.fileio import sha256_file  # noqa: E402


def commands(adapter: Path, base: Path, out: Path) -> dict[str, list[str]]:
    return {
        "export-lora": cli_command("export-lora", adapter, "--base", base, "--out", out / "x.lora.gguf"),
        "merge": cli_command("merge", adapter, "--base", base, "--out", out / "m.f16.gguf"),
        "quantize": cli_command("quantize", base, "--out", out / "q.q8_0.gguf", "--type", "q8_0"),
    }


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_temp(child: subprocess.Popen, out: Path, before: set) -> float | None:
    """The moment a temp file new to ``out`` appears (None if the command ended first)."""
    while child.poll() is None:
        if set(stray_temp_files(out)) - before:
            return time.perf_counter()
        time.sleep(0.0005)
    return None


def write_window(command: list[str], out: Path) -> float:
    child = start(command)
    seen = wait_for_temp(child, out, set(stray_temp_files(out)))
    child.wait()
    if child.returncode != 0:
        raise SystemExit(f"{command[3]} failed: {child.stderr.read().decode()}")
    return max(0.001, time.perf_counter() - seen) if seen else 0.001


def mismatched_manifests(out: Path) -> list[Path]:
    bad = []
    for manifest in out.glob("*.manifest.json"):
        artifact = manifest.with_name(manifest.name.removesuffix(".manifest.json"))
        if artifact.is_file() and json.loads(manifest.read_text())["sha256"] != sha256_file(artifact):
            bad.append(artifact)
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="kills in total, spread over the three commands")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="kill_writes."))
    work.mkdir(parents=True, exist_ok=True)
    base = tiny_gguf(work, "llama")
    adapter = tiny_peft_adapter(work / "adapter")
    out = work / "out"
    out.mkdir(exist_ok=True)
    todo = commands(adapter, base, out)
    windows = {name: write_window(command, out) for name, command in todo.items()}
    print("write windows: " + ", ".join(f"{n} {w * 1000:.0f} ms" for n, w in windows.items()), flush=True)

    kills, missed, no_manifest_seen = 0, 0, 0
    names = list(todo)
    while kills < args.runs:
        name = names[kills % len(names)]
        child = start(todo[name])
        seen = wait_for_temp(child, out, set(stray_temp_files(out)))
        if seen is not None:
            time.sleep(max(0.0, seen + rng.uniform(0, windows[name]) - time.perf_counter()))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        else:
            missed += 1  # finished before the kill: not counted
        child.wait()
        no_manifest_seen += len(artifacts_without_manifest(out))

    left_by_kills = len(stray_temp_files(out))
    for command in todo.values():
        subprocess.run(command, cwd=ROOT, env=cli_env(), check=True, capture_output=True)
    stray, orphans = stray_temp_files(out), artifacts_without_manifest(out)
    print(f"runs that finished before their kill (not counted): {missed}")
    print(f"temp files present right after the last kill: {left_by_kills}")
    print(f"artifacts without manifest seen after any kill: {no_manifest_seen}")
    print(f"manifests whose sha256 disagrees with their artifact: {len(mismatched_manifests(out))}")
    for path in stray + orphans:
        print(f"  left: {path}")
    print("kills / stray temp files / artifacts without manifest")
    print(f"{kills} / {len(stray)} / {len(orphans)}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
