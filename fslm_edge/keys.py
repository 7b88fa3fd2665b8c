"""Settings declared once: type, default, allowed range and a one-line doc.

Stack-file keys (``config``) and training-recipe keys (``recipe``) are each a
tuple of ``Key``; type checks, range checks, defaults, "did you mean" hints and
the key tables of ``stacks/README.md`` all come from those declarations.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # the default of a key that must be given


@dataclass(frozen=True)
class Key:
    name: str
    types: tuple[type, ...]
    default: Any
    expects: str  # what a valid value is, as errors say it: "a positive integer"
    doc: str  # one line for the documentation table
    check: Callable[[Any], bool] | None = None
    shown_default: str | None = None  # the default as the documentation writes it, when not the value
    values: tuple = ()  # the only valid values, when there is a fixed set

    def accepts_type(self, value: Any) -> bool:
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, float) and not math.isfinite(value):
            return False  # nan and inf are never a setting
        return isinstance(value, self.types)

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is valid for this key, else what it must be."""
        if self.values and self.accepts_type(value) and value not in self.values:
            return f"unknown {self.name} {short_repr(value)}{suggest(value, self.values)}"
        if not self.accepts_type(value) or (self.check is not None and not self.check(value)):
            return f"'{self.name}' must be {self.expects}, not {short_repr(value)}"
        return None

    @property
    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is REQUIRED:
            return "required"
        if self.default is None:
            return "-"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, str):
            return f'"{self.default}"'
        return str(self.default)


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def between(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: low <= v <= high


def suggest(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or the list of valid names."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(valid))})"


def by_name(keys: Iterable[Key]) -> dict[str, Key]:
    return {key.name: key for key in keys}


def check_table(table: Mapping[str, Any], keys: Mapping[str, Key]) -> tuple[str, str] | None:
    """The first (key, problem) of ``table``: an unknown key or a bad value."""
    for name, value in table.items():
        key = keys.get(name)
        if key is None:
            return name, f"unknown key '{name}'{suggest(name, keys)}"
        problem = key.problem(value)
        if problem is not None:
            return name, problem
    return None


def values_with_defaults(table: Mapping[str, Any], keys: Iterable[Key]) -> dict[str, Any]:
    """Every declared key's value: the table's, else the default."""
    return {key.name: table.get(key.name, key.default) for key in keys}


def markdown_table(keys: Iterable[Key]) -> str:
    """The documentation table of ``keys`` (what ``stacks/README.md`` shows)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key.name}` | {key.default_text} | {key.doc} |" for key in keys]
    return "\n".join(lines)
