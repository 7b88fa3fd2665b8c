"""Would the qa answer stage do better if it weighed its reasoning line more?
Context-aware scoring (Shi et al. 2023, "Trusting Your Evidence"): each option
scores its shipped value plus ``weight`` times what the earlier stages' texts
add to its log-probability,

    score = s(question, texts) - s("N/A", no texts) + weight * (s(question, texts) - s(question, no texts))

for lettered options (the calibrated pick; the middle term is left out for a
yes/no question, which the stack picks by its whole log-probability). Weight 0
is the shipped stack, -1 its answer stage alone, above 0 the reasoning read
harder.

    python scripts/reading_weight.py stacks/qa.toml --task openbookqa --split dev --limit 200 \
        --data-dir ../shared/data --records obqa_dev.jsonl

Each question is typed as ``fslm-edge eval --mode generate`` types it and the
earlier stages run as ``fslm-edge run`` runs them (``--cache-dir``: the
evaluation's generation memo, so texts are generated once). ``--records``
keeps each question's three score vectors (JSONL, appended, resumed by id);
the table is printed from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = (-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def option_logprobs(context, choices: list[str]) -> list[float]:
    """Each option's whole log-probability as the continuation of a scoring context."""
    from fslm_edge.engine.scoring import ChoiceScorer, split_continuation
    from fslm_edge.formats import continuation

    model, prompt = context.model, context.prompt
    pieces = [split_continuation(model, prompt, continuation(prompt.text, c))[1] for c in choices]
    return [s.logprob for s in ChoiceScorer(model).score(context.tokens, pieces)]


def record(stack, task, example) -> dict:
    from fslm_edge.evaluation.matcher import is_yes_no
    from fslm_edge.stack import CONTENT_FREE

    question = task.generate_input(example)
    stages = {s.name: s.text for s in stack.run(question).stages}
    texts = {s.name: stages.get(s.name, "") for s in stack.config.stages}
    empty = dict.fromkeys(texts, "")
    choices = list(example.choices)
    return {"id": example.id, "task": task.name, "gold": example.answer, "yes_no": is_yes_no(choices),
            "texts": stages,
            "read": option_logprobs(stack.score_context(question, texts), choices),
            "unread": option_logprobs(stack.score_context(question, empty), choices),
            "free": option_logprobs(stack.score_context(CONTENT_FREE, empty), choices)}


def right(rec: dict, weight: float) -> bool:
    read, unread, free = rec["read"], rec["unread"], rec["free"]
    scores = [r + weight * (r - u) - (0.0 if rec["yes_no"] else f) for r, u, f in zip(read, unread, free)]
    return scores.index(max(scores)) == rec["gold"]


def table(records: list[dict]) -> str:
    lines = [f"{'task':<16} {'n':>4} " + " ".join(f"{w:>6g}" for w in WEIGHTS) + "   (% right at each weight)"]
    groups = {}
    for rec in records:
        groups.setdefault(rec["task"], []).append(rec)
    if len(groups) > 1:
        groups["all"] = records
    for name, recs in groups.items():
        lines.append(f"{name:<16} {len(recs):>4} "
                     + " ".join(f"{100 * sum(right(r, w) for r in recs) / len(recs):>6.1f}" for w in WEIGHTS))
    return "\n".join(lines)


def main() -> None:
    from fslm_edge import Stack
    from fslm_edge.evaluation.data import find_task_file, read_examples, select
    from fslm_edge.evaluation.tasks import get_task
    from fslm_edge.stagecache import GenerationMemo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack")
    parser.add_argument("--task", action="append", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N of the seeded sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, help="the evaluation cache whose generation memo to share")
    parser.add_argument("--records", type=Path, required=True, help="JSONL of score vectors (resumed)")
    args = parser.parse_args()

    records = [json.loads(line) for line in args.records.open()] if args.records.exists() else []
    done = {(r["task"], r["id"]) for r in records}
    with Stack.load(args.stack, {"stack.threads": args.threads}) as stack, args.records.open("a") as out:
        if args.cache_dir is not None:
            args.cache_dir.mkdir(parents=True, exist_ok=True)
            stack.generation_memo = GenerationMemo(args.cache_dir / "generations.jsonl")
        for name in args.task:
            task = get_task(name)
            path = find_task_file(args.data_dir, name, args.split)
            for example in select(read_examples(path, task.kind), args.limit, args.seed)[args.skip:]:
                if (name, example.id) in done:
                    continue
                records.append(record(stack, task, example))
                out.write(json.dumps(records[-1]) + "\n")
                out.flush()
    wanted = set(args.task)
    print(table([r for r in records if r["task"] in wanted]))


if __name__ == "__main__":
    main()
