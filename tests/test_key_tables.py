"""stacks/README.md's key tables are the declarations, not a copy of them."""

import re
from pathlib import Path

from fslm_edge.config import STACK_KEYS, STAGE_KEYS
from fslm_edge.keys import markdown_table
from fslm_edge.recipe import RECIPE_KEYS, SOURCE_KEYS

README = Path(__file__).resolve().parents[1] / "stacks" / "README.md"


def test_stacks_readme_key_tables_match_the_declarations():
    text = README.read_text(encoding="utf-8")
    for name, keys in (("stack", STACK_KEYS), ("stage", STAGE_KEYS), ("train", RECIPE_KEYS), ("data", SOURCE_KEYS)):
        found = re.search(rf"<!-- keys:{name} [^>]*-->\n(.*?)\n<!-- /keys:{name} -->", text, re.S)
        assert found, f"no generated table for {name}"
        assert found.group(1) == markdown_table(keys), f"regenerate the {name} table (python scripts/key_tables.py)"


def test_every_declared_default_is_a_valid_value():
    for key in (*STACK_KEYS, *STAGE_KEYS, *RECIPE_KEYS, *SOURCE_KEYS):
        if key.default is None or key.name in ("name", "template", "data", "file", "target"):
            continue  # optional keys without a value, and required ones
        value = list(key.default) if isinstance(key.default, tuple) else key.default
        assert key.problem(value) is None, key
