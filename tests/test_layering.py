"""The runtime core depends on nothing above it."""

import subprocess
import sys

CORE = ["fslm_edge", "fslm_edge.config", "fslm_edge.models", "fslm_edge.engine", "fslm_edge.stack",
        "fslm_edge.events", "fslm_edge.errors", "fslm_edge.prompts", "fslm_edge.templates", "fslm_edge.options"]
FORBIDDEN = ["fslm_edge.evaluation", "fslm_edge.convert", "convert", "fslm_edge.server", "fslm_edge.cli", "rich",
             "click", "matplotlib", "torch", "peft", "transformers", "starlette", "uvicorn"]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_the_runtime_core_imports_nothing_above_it():
    loaded = _loaded_after("\n".join(f"import {name}" for name in CORE))
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert not bad


def test_only_the_engine_imports_llama_cpp():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    imports = re.compile(r"^\s*(import llama_cpp|from llama_cpp)", re.M)
    offenders = [str(p.relative_to(root)) for folder in ("fslm_edge", "convert") for p in (root / folder).rglob("*.py")
                 if imports.search(p.read_text(encoding="utf-8")) and "engine" not in p.relative_to(root).parts]
    assert not offenders


def test_run_does_not_import_the_eval_or_build_side():
    loaded = _loaded_after("from fslm_edge import cli\ncli.main.get_command(None, 'run')")
    above = ("fslm_edge.evaluation", "fslm_edge.convert", "convert", "fslm_edge.server", "torch")
    assert not any(m.startswith(above) for m in loaded)
