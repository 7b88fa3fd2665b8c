"""What the qa stack's earlier stages add: score its answer stage on the stage texts an evaluation
recorded, with the ``{reason}`` text it reads replaced.

    fslm-edge eval stacks/qa.toml --task openbookqa --data-dir DATA --limit 500 --seed 0 --out obqa.json
    python scripts/qa_ablation.py obqa.json --task openbookqa --data-dir DATA

Variants: ``recall`` (the recall stage's text in place of the reason stage's), ``shuffled`` (the reason
text the stack wrote for the next question of the set), ``empty`` (no reasoning: the answer stage alone,
the same prompt as docs/qa-answer-only.toml). Prints each variant's score (the task's metric) next to the stack's as
recorded, with the paired counts and a two-sided sign test. Results: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fslm_edge.evaluation.data import find_task_file, read_examples  # noqa: E402
from fslm_edge.evaluation.harness import StackTarget  # noqa: E402
from fslm_edge.evaluation.tasks import get_task  # noqa: E402

VARIANTS = ("recall", "shuffled", "empty")


class ReplayTarget(StackTarget):
    """The stack, its earlier stages replaced by the given texts."""

    upstream: dict[str, str] = {}

    def _context(self, stack_input: str):
        return self.stack.score_context(stack_input, self.upstream), [], True


def replaced(texts: list[dict[str, str]], index: int, variant: str) -> dict[str, str]:
    upstream = dict(texts[index])
    if variant == "recall":
        upstream["reason"] = upstream["recall"]
    elif variant == "shuffled":
        upstream["reason"] = texts[(index + 1) % len(texts)]["reason"]
    elif variant == "empty":
        upstream["reason"] = ""
    return upstream


def sign_test(a: int, b: int) -> float:
    n, k = a + b, min(a, b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", type=Path, help="results of fslm-edge eval with the stack as first target")
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--stack", default="stacks/qa.toml")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="default: all three")
    args = parser.parse_args()
    task = get_task(args.task)
    examples = {e.id: e for e in read_examples(find_task_file(args.data_dir, args.task, "test"), task.kind)}
    results = json.loads(args.eval_json.read_text())["results"]
    records = next(r["examples"] for r in results if r["task"] == args.task)  # the first target's
    key = {"acc": "correct", "acc_norm": "correct_norm"}[task.metric]
    texts = [{s["name"]: s["text"] for s in r["stages"]} for r in records]
    target = ReplayTarget(args.stack)
    try:
        recorded = sum(r[key] for r in records)
        print(f"{args.task} ({task.metric}): stack as recorded {100 * recorded / len(records):.1f} "
              f"({recorded}/{len(records)})")
        for variant in args.variant or VARIANTS:
            right = []
            for index, record in enumerate(records):
                target.upstream = replaced(texts, index, variant)
                right.append(target.run_mc(task, examples[record["id"]], False)[key])
            only_stack = sum(r[key] and not v for r, v in zip(records, right))
            only_variant = sum(v and not r[key] for r, v in zip(records, right))
            print(f"  reason = {variant:<8} {100 * sum(right) / len(records):.1f} ({sum(right)}/{len(records)}); "
                  f"stack only {only_stack}, variant only {only_variant}, "
                  f"sign test p = {sign_test(only_stack, only_variant):.2g}")
    finally:
        target.close()


if __name__ == "__main__":
    main()
