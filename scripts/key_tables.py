"""Rewrite the generated key tables of stacks/README.md from the declarations.

    python scripts/key_tables.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fslm_edge.config import STACK_KEYS, STAGE_KEYS  # noqa: E402
from fslm_edge.fileio import atomic_write  # noqa: E402
from fslm_edge.keys import markdown_table  # noqa: E402
from fslm_edge.recipe import RECIPE_KEYS, SOURCE_KEYS  # noqa: E402

TABLES = {"stack": STACK_KEYS, "stage": STAGE_KEYS, "train": RECIPE_KEYS, "data": SOURCE_KEYS}


def main() -> None:
    path = ROOT / "stacks" / "README.md"
    text = path.read_text(encoding="utf-8")
    for name, keys in TABLES.items():
        pattern = re.compile(rf"(<!-- keys:{name} [^>]*-->\n).*?(\n<!-- /keys:{name} -->)", re.S)
        text = pattern.sub(lambda m, keys=keys: m.group(1) + markdown_table(keys) + m.group(2), text)
    atomic_write(path, text.encode("utf-8"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
