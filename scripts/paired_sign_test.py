"""Paired sign test between two columns of an `fslm-edge eval` results JSON.

    python scripts/paired_sign_test.py results.json stacks/qa.toml builtin:smollm2-135m-instruct \\
        [--mode generate] [--mode-b likelihood] [--markdown] [--also other-results.json ...]

A column is right on an example by its headline metric (likelihood mode:
acc_norm where the task reports acc_norm; generate mode: the matcher). For
every task both columns ran, and for all tasks pooled: on the examples both
answered (matched by id), b = A right and B wrong, c = A wrong and B right, and
the exact two-sided binomial p of min(b, c) in b + c fair coin flips (the
examples both got right or both got wrong say nothing about the difference).
"""

from __future__ import annotations

import argparse
import sys
from math import comb
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sign_test_p(b: int, c: int) -> float:
    """Exact two-sided binomial p for b successes against c (p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


CORRECT_KEYS = {"acc_norm": "correct_norm", "acc_norm_nospace": "correct_norm_nospace"}


def column_records(payload: dict, target: str, mode: str) -> dict[str, dict[str, bool]]:
    """{task: {example id: right by the column's headline metric}} of one
    (target, mode) column: likelihood mode's acc_norm where the task's headline
    is acc_norm, generate mode's matcher decision."""
    metrics = {t["name"]: t["metric"] for t in payload["tasks"]}
    out: dict[str, dict[str, bool]] = {}
    for entry in payload["results"]:
        if entry["target"] == target and entry.get("mode", "likelihood") == mode:
            key = CORRECT_KEYS.get(metrics.get(entry["task"]), "correct") if mode == "likelihood" else "correct"
            out[entry["task"]] = {e["id"]: bool(e.get(key, e["correct"])) for e in entry["examples"]}
    if not out:
        columns = sorted({(e["target"], e.get("mode", "likelihood")) for e in payload["results"]})
        known = ", ".join(f"{t} ({m})" for t, m in columns)
        raise SystemExit(f"error: no column {target} ({mode}) in the results; columns: {known}")
    return out


def paired(a: dict[str, bool], b: dict[str, bool]) -> tuple[int, int, int, int, int]:
    """(n, A right, B right, b, c) over the ids both have."""
    ids = [i for i in a if i in b]
    right_a = sum(a[i] for i in ids)
    right_b = sum(b[i] for i in ids)
    only_a = sum(a[i] and not b[i] for i in ids)
    only_b = sum(b[i] and not a[i] for i in ids)
    return len(ids), right_a, right_b, only_a, only_b


def rows(payload: dict, target_a: str, mode_a: str, target_b: str, mode_b: str) -> list[tuple]:
    a, b = column_records(payload, target_a, mode_a), column_records(payload, target_b, mode_b)
    tasks = [t for t in a if t in b]
    out = []
    totals = [0, 0, 0, 0, 0]
    for task in tasks:
        figures = paired(a[task], b[task])
        totals = [x + y for x, y in zip(totals, figures)]
        out.append((task, *figures, sign_test_p(figures[3], figures[4])))
    out.append(("all tasks", *totals, sign_test_p(totals[3], totals[4])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another results JSON whose columns are added (targets evaluated in separate runs)")
    parser.add_argument("target_a")
    parser.add_argument("target_b")
    parser.add_argument("--mode", default="generate", help="mode of target A (and of B unless --mode-b)")
    parser.add_argument("--mode-b", help="mode of target B")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args()
    from fslm_edge.fileio import parse_json_text

    payload = parse_json_text(args.results.read_bytes())
    for extra in args.also:
        payload["results"] = payload["results"] + parse_json_text(extra.read_bytes())["results"]
    mode_b = args.mode_b or args.mode
    table = rows(payload, args.target_a, args.mode, args.target_b, mode_b)
    a_name, b_name = f"{args.target_a} ({args.mode})", f"{args.target_b} ({mode_b})"
    if args.markdown:
        print("| task | n | A right | B right | b (A only) | c (B only) | two-sided p |")
        print("|---|---|---|---|---|---|---|")
        for task, n, ra, rb, b, c, p in table:
            print(f"| {task} | {n} | {ra} | {rb} | {b} | {c} | {p:.3g} |")
        print(f"\nA = {a_name}, B = {b_name}")
        return
    print(f"A = {a_name}\nB = {b_name}")
    for task, n, ra, rb, b, c, p in table:
        print(f"{task:>14}: n={n:4d}  A right {ra:4d}  B right {rb:4d}  b={b:3d}  c={c:3d}  p={p:.3g}")


if __name__ == "__main__":
    main()
