"""Does a stack's final stage read an earlier stage's text? Hand it the text
"The answer is <option>." as that stage's output, naming the gold option, a
wrong one, or nothing, and count how often the printed answer is right.

    python scripts/hint_channel.py stacks/qa.toml --stage reason --task arc_easy --task openbookqa \
        --data-dir ../shared/data --limit 100 --seed 0

Multiple-choice tasks, typed as ``fslm-edge eval --mode generate`` types them
and matched by its matcher. The stages before ``--stage`` are given empty
texts (they only feed it), so each question costs three runs of the stages
after ``--stage``. If a gold
hint barely raises the accuracy over the empty text, no earlier stage can
make the final one better, however good its text: the final stage itself must
be trained to read it. If it does, the question is how often an earlier stage
can name the gold option where the final stage alone would not.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HINTS = {
    "empty": lambda example, rng: "",
    "gold": lambda example, rng: f"The answer is {example.choices[example.answer]}.",
    "wrong": lambda example, rng: "The answer is "
    + rng.choice([c for i, c in enumerate(example.choices) if i != example.answer]) + ".",
}


def main() -> None:
    from fslm_edge import Stack
    from fslm_edge.evaluation.data import find_task_file, read_examples, select
    from fslm_edge.evaluation.harness import decide
    from fslm_edge.evaluation.tasks import get_task

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack")
    parser.add_argument("--stage", required=True, help="the earlier stage whose text is replaced by the hint")
    parser.add_argument("--task", action="append", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    with Stack.load(args.stack, {"stack.threads": args.threads}) as stack:
        names = [s.name for s in stack.config.stages]
        if args.stage not in names:
            raise SystemExit(f"error: {args.stack} has no stage '{args.stage}' (stages: {', '.join(names)})")
        before = {name: "" for name in names[:names.index(args.stage)]}
        print(f"{'task':<16} {'n':>4} " + " ".join(f"{h:>7}" for h in HINTS) + "   (% right, hint given as "
              f"'{args.stage}')", flush=True)
        totals = dict.fromkeys(HINTS, 0)
        count = 0
        for name in args.task:
            task = get_task(name)
            if task.kind != "mc":
                raise SystemExit(f"error: {name} is not a multiple-choice task")
            path = find_task_file(args.data_dir, name, args.split)
            examples = select(read_examples(path, task.kind), args.limit, args.seed)
            right = dict.fromkeys(HINTS, 0)
            for example in examples:
                question = task.generate_input(example)
                for hint, text_of in HINTS.items():
                    text = text_of(example, random.Random(example.id))
                    result = stack.run(question, given={**before, args.stage: text})
                    right[hint] += decide(result.answer, example.choices, example.answer)["correct"]
            for hint in HINTS:
                totals[hint] += right[hint]
            count += len(examples)
            print(f"{name:<16} {len(examples):>4} "
                  + " ".join(f"{100 * right[h] / len(examples):>7.1f}" for h in HINTS), flush=True)
        if len(args.task) > 1:
            print(f"{'all':<16} {count:>4} " + " ".join(f"{100 * totals[h] / count:>7.1f}" for h in HINTS))


if __name__ == "__main__":
    main()
