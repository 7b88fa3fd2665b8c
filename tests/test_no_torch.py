"""The runtime imports and runs with torch, transformers and peft unavailable."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
for name in ("torch", "transformers", "peft"):
    sys.modules[name] = None  # any import of them now fails
from fslm_edge import Stack
import fslm_edge.cli, fslm_edge.report
with Stack.load("stacks/qa.toml", {"*.max_tokens": 3}) as stack:
    result = stack.run("Hello?")
assert result.answer
banned = [m for m in ("torch", "rich", "click") if sys.modules.get(m) is not None and m != "click"]
print("ok", banned)
"""


def test_runtime_runs_without_torch():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok []"


def test_library_does_not_import_rich_or_click():
    code = "import sys, fslm_edge; print(sorted(m for m in ('rich', 'click', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
