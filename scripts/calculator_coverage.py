"""How often the stage calculator writes the right value on GSM8K-style text.

    python scripts/calculator_coverage.py --data-dir ../shared/data [--against OLD_calculator.py] [--show 10]

At every "=" in the GSM8K train rationales (the text a solve stage learns to write) that is followed by
a number, the calculator sees the rationale up to the "=" and writes a value or nothing. Counted: the
value equals the rationale's number (to 0.01, a percentage either way), another value, or nothing. With
--against, an older calculator module (e.g. `git show 09cd05f:fslm_edge/calculator.py > old_calculator.py`) is
counted beside it, with examples of where they differ.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import re
import sys
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fslm_edge import calculator  # noqa: E402
from fslm_edge.fileio import read_jsonl  # noqa: E402

GOLD = re.compile(r"\s*\$?\s*(-?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+))(?![\d/])(%?)")


def judge(written: str | None, gold: Fraction, gold_percent: bool) -> str:
    if written is None:
        return "nothing"
    text = written.strip().replace(",", "")
    value = Fraction(text.rstrip("%"))
    candidates = [value]
    if text.endswith("%") != gold_percent:  # 60% against .6, or .6 against 60%
        candidates.append(value / 100 if text.endswith("%") else value * 100)
    return "right" if any(abs(v - gold) <= Fraction(1, 100) for v in candidates) else "other"


def sites(path: Path):
    """(text up to an '=', the number after it, whether that is a percentage)."""
    for _, row in read_jsonl(path):
        text = row["rationale"]
        for sign in re.finditer("=", text):
            found = GOLD.match(text, sign.end())
            if found:
                yield text[:sign.end()], Fraction(found.group(1).replace(",", "")), found.group(2) == "%"


def load(path: Path):
    spec = importlib.util.spec_from_file_location("calculator_against", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--against", type=Path, help="an older calculator.py to compare with")
    parser.add_argument("--show", type=int, default=8, help="examples per kind of difference")
    args = parser.parse_args()
    older = load(args.against) if args.against else None
    counts, pairs, examples = collections.Counter(), collections.Counter(), collections.defaultdict(list)
    for prefix, gold, percent in sites(args.data_dir / "gsm8k_train.jsonl"):
        mine = calculator.completion(prefix)
        verdict = judge(mine, gold, percent)
        counts[verdict] += 1
        if older is not None:
            theirs = older.completion(prefix)
            pair = (judge(theirs, gold, percent), verdict)
            pairs[pair] += 1
            if pair[0] != pair[1]:
                examples[pair].append((prefix.rsplit("\n", 1)[-1][-64:], theirs, mine))
    total = sum(counts.values())
    print(f"calculator version {calculator.VERSION}: {total} '=' signs followed by a number in the rationales")
    for verdict in ("right", "other", "nothing"):
        print(f"  {verdict:<8}{counts[verdict]:7d}  {counts[verdict] / total:6.1%}")
    if older is not None:
        for verdict in ("right", "other", "nothing"):
            n = sum(v for (a, _), v in pairs.items() if a == verdict)
            print(f"  against {args.against.name}: {verdict:<8}{n:7d}  {n / total:6.1%}")
        for (was, now), items in sorted(examples.items(), key=lambda kv: -len(kv[1])):
            print(f"{was} -> {now}: {len(items)}")
            for text, theirs, mine in items[:args.show]:
                print(f"    {text!r}: {theirs!r} -> {mine!r}")


if __name__ == "__main__":
    main()
