"""``fslm-edge eval``: score stacks and models on tasks, side by side."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import InputError
from .data import find_task_file, read_examples, select


def _infer_kind(path: Path) -> str:
    import gzip
    import json

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    return "mc" if isinstance(row, dict) and ("choices" in row or "facts" in row) else "gen"
    except (OSError, ValueError):
        pass
    return "gen"


def build_runs(tasks, data_dir, data_file, fmt, split, limit, seed, skip_bad):
    """The TaskRuns to evaluate (named tasks found in data_dir, or one --data file)."""
    from .harness import TaskRun
    from .tasks import custom_task, get_task

    specs = []
    if data_file is not None:
        path = Path(data_file)
        if len(tasks) > 1:
            raise InputError("--data takes at most one --task (whose prompt format it uses)")
        task = get_task(tasks[0]) if tasks else custom_task(path.name.split(".")[0], fmt or _infer_kind(path))
        specs.append((task, path, "file"))
    else:
        if not tasks:
            raise InputError("name at least one --task (or give --data FILE --format mc|gen)")
        if data_dir is None:
            raise InputError("--data-dir DIR is needed to find <task>_<split>.jsonl files")
        for name in tasks:
            task = get_task(name)
            path = find_task_file(Path(data_dir), task.name, split)
            specs.append((task, path, path.name.split(".")[0].removeprefix(task.name + "_")))
    runs = []
    for task, path, found_split in specs:
        bad: list = []
        examples = select(read_examples(path, task.kind, skip_bad, bad), limit, seed)
        for problem in bad:
            click.echo(f"warning: skipped bad row {problem}", err=True)
        runs.append(TaskRun(task, path, found_split, tuple(examples), tuple(bad)))
    return runs


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)


def run_all(targets, runs, lettered, threads, cache_dir, max_new_tokens=256, batch=1):
    """Evaluate every (target, run); returns {(target, task name): [records]}."""
    from .harness import ExampleCache, evaluate, open_target

    results = {}
    total = sum(len(run.examples) for run in runs) * len(targets)
    with _progress() as progress:
        bar = progress.add_task("eval", total=total)
        for ref in targets:
            target = open_target(ref, threads, max_new_tokens, cache_dir, batch)
            try:
                for run in runs:
                    progress.update(bar, description=f"{Path(ref).name} · {run.task.name}")
                    cache = ExampleCache(cache_dir, target.fingerprint, run.task, lettered) if cache_dir else None
                    records = []
                    for record in evaluate(target, run, lettered, cache):
                        records.append(record)
                        progress.advance(bar)
                    results[(ref, run.task.name)] = records
            finally:
                target.close()
    return results


@click.command("eval")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@click.option("--task", "tasks", multiple=True, metavar="T", help="A named task (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder of <task>_<split>.jsonl files.")
@click.option("--data", "data_file", type=click.Path(dir_okay=False), help="One JSONL file to evaluate.")
@click.option("--format", "fmt", type=click.Choice(["mc", "gen"]), help="Schema of --data (default: guessed).")
@click.option("--split", default="test", show_default=True, help="Split; falls back test -> dev -> validation.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N examples per task.")
@click.option("--seed", type=int, help="With --limit: a seeded random sample instead of the first N.")
@click.option("--out", default="eval_results.json", show_default=True, help="Results JSON (chart: same name .png).")
@click.option("--skip-bad", is_flag=True, help="Skip bad rows (reported with file:line) instead of failing.")
@click.option("--lettered", is_flag=True, help="List the choices as A. B. ... and score the letters.")
@click.option("--threads", type=int, default=0, help="CPU threads for single models (0: automatic).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Generation budget for generative tasks on single models (stacks use their own).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Single models: score this many multiple-choice questions in one llama.cpp batch "
                   "(fastest on BF16/F16 weights; see docs/eval.md).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Per-example cache (resume).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the per-example cache.")
def eval_command(targets, tasks, data_dir, data_file, fmt, split, limit, seed, out, skip_bad, lettered,
                 threads, max_new_tokens, batch, cache_dir, no_cache):
    """Score TARGETs (stack .toml files or models: builtin:smollm2-135m-instruct, a GGUF path)
    on tasks; prints a side-by-side table, writes OUT (every prediction and stage text) and OUT.png."""
    import os

    from rich.console import Console

    from .harness import default_cache_dir
    from .report import render_table, summarize, write_chart, write_json

    runs = build_runs(tasks, data_dir, data_file, fmt, split, limit, seed, skip_bad)
    threads = threads if threads > 0 else max(1, min(8, os.cpu_count() or 1))
    folder = None if no_cache else Path(cache_dir) if cache_dir else default_cache_dir()
    started = time.time()
    results = run_all(list(targets), runs, lettered, threads, folder, max_new_tokens, batch)
    task_names = [run.task.name for run in runs]
    summaries = [summarize(ref, run.task, results[(ref, run.task.name)]) for ref in targets for run in runs]
    Console().print(render_table(summaries, list(targets), task_names))
    out_path = Path(out)
    chart = out_path.with_suffix(".png")
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "settings": {"split": split, "limit": limit, "seed": seed, "lettered": lettered, "threads": threads,
                     "max_new_tokens": max_new_tokens, "batch": batch},
        "targets": list(targets),
        "tasks": [{"name": r.task.name, "file": str(r.path), "split": r.split, "n": len(r.examples),
                   "metric": r.task.metric, "skipped_bad_rows": [str(b) for b in r.bad]} for r in runs],
        "summary": [s.to_dict() for s in summaries],
        "results": [{"target": ref, "task": name, "examples": records}
                    for (ref, name), records in results.items()],
    }
    write_json(out_path, payload)
    write_chart(chart, summaries, list(targets), task_names)
    click.echo(f"wrote {out_path} and {chart}", err=True)
