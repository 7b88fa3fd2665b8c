"""Helpers for the interrupted-write tests and scripts/kill_writes.py: a
random PEFT LoRA adapter for the tiny llama model of build_fixtures, and the
CLI run as a real process (so it can be killed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from fslm_edge.cli import main; sys.exit(main())"


def tiny_peft_adapter(folder: Path, seed: int = 0) -> Path:
    """A PEFT LoRA folder (random, non-zero B) over the tiny llama's q/v projections."""
    from build_fixtures import tiny_hf_model
    from peft import LoraConfig, get_peft_model

    folder = Path(folder)
    if not (folder / "adapter_model.safetensors").is_file():
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(tiny_hf_model("llama", seed), config).save_pretrained(str(folder))
    return folder


def cli_command(*args: str) -> list[str]:
    """``fslm-edge ARGS`` with this checkout's modules (not whichever is installed)."""
    return [sys.executable, "-c", CLI, *map(str, args)]


def cli_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, preexec_fn=None, timeout: float = 300, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**cli_env(), **(env or {})}, preexec_fn=preexec_fn)


def stray_temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob(".*.tmp"))


def artifacts_without_manifest(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*.gguf")
                  if not p.with_name(p.name + ".manifest.json").is_file())
