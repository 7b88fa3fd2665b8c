"""``fslm-edge eval``: score stacks and models on tasks, side by side."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import click

from ..config import default_threads
from ..errors import InputError
from .data import find_task_file, guess_kind, read_examples, select


def build_runs(tasks, data_dir, data_file, fmt, split, limit, seed, skip_bad):
    """The TaskRuns to evaluate (named tasks found in data_dir, or one --data file)."""
    from .harness import TaskRun
    from .tasks import custom_task, get_task

    specs = []
    if data_file is not None:
        path = Path(data_file)
        if len(tasks) > 1:
            raise InputError("--data takes at most one --task (whose prompt format it uses)")
        task = get_task(tasks[0]) if tasks else custom_task(path.name.split(".")[0], fmt or guess_kind(path))
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


MODES = ("likelihood", "generate")


@dataclass(frozen=True)
class Column:
    """One column of the table: a target in one mode."""

    ref: str
    mode: str
    label: str


def columns(targets, modes) -> list[Column]:
    """Every (target, mode); labels are the bare targets when only likelihood
    mode (today's scoring) is asked for."""
    plain = list(modes) == ["likelihood"]
    return [Column(ref, mode, ref if plain else f"{ref} ({mode})") for ref in targets for mode in modes]


def _engine(run, mode: str) -> str:
    """Which target evaluates ``run`` in ``mode``: generative tasks are
    generated in either mode (as they always were), so both columns share one
    computation."""
    return "generate" if mode == "generate" and run.task.kind == "mc" else "likelihood"


def _open(ref: str, engine: str, threads, max_new_tokens, cache_dir, batch):
    from .harness import GenerateTarget, open_target

    if engine == "generate":
        return GenerateTarget(ref, threads, batch, cache_dir)
    return open_target(ref, threads, max_new_tokens, cache_dir, batch)


def run_all(targets, runs, lettered, threads, cache_dir, max_new_tokens=256, batch=1, modes=("likelihood",)):
    """Evaluate every (target, mode, run); returns {(column label, task name): records}."""
    from .harness import ExampleCache, evaluate

    cols = columns(targets, modes)
    results, done = {}, {}
    jobs = {(c.ref, _engine(run, c.mode), run.task.name): len(run.examples) for c in cols for run in runs}
    with _progress() as progress:
        bar = progress.add_task("eval", total=sum(jobs.values()))
        for ref in targets:
            opened = {}
            try:
                for column in (c for c in cols if c.ref == ref):
                    for run in runs:
                        engine = _engine(run, column.mode)
                        key = (ref, engine, run.task.name)
                        if key not in done:
                            if engine not in opened:
                                opened[engine] = _open(ref, engine, threads, max_new_tokens, cache_dir, batch)
                            target = opened[engine]
                            progress.update(bar, description=f"{Path(ref).name} · {engine} · {run.task.name}")
                            mode = "generate" if engine == "generate" else "likelihood"
                            cache = ExampleCache(cache_dir, target.fingerprint, run.task,
                                                 lettered and mode == "likelihood", mode) if cache_dir else None
                            records = []
                            for record in evaluate(target, run, lettered and mode == "likelihood", cache):
                                records.append(record)
                                progress.advance(bar)
                            done[key] = records
                        results[(column.label, run.task.name)] = done[key]
            finally:
                for target in opened.values():
                    target.close()
    return results


def check_out(out: str) -> tuple[Path, Path]:
    """The results JSON and chart paths, refused before any question runs if
    either cannot be written (a folder, a file in the way, a folder that
    refuses a file: probed by creating and removing a temporary one)."""
    from ..fileio import output_file, probe_writable

    out_path = output_file(out)
    chart = output_file(out_path.with_suffix(".png"), "--out's chart")
    folder = next(p for p in out_path.parents if p.exists())  # output_file checked it is a folder
    try:
        probe_writable(folder)
    except OSError as exc:
        raise InputError(f"--out {out_path}: cannot write into {folder} ({exc.strerror or exc}); "
                         "give another path") from None
    return out_path, chart


@click.command("eval")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@click.option("--task", "tasks", multiple=True, metavar="T", help="A named task (repeatable).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), default=("likelihood",),
              show_default=True, help="likelihood: score each choice after the last stage's prompt; generate: run "
                                      "the target as `fslm-edge run` does and match the printed answer "
                                      "(repeatable: side by side).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder of <task>_<split>.jsonl files.")
@click.option("--data", "data_file", type=click.Path(dir_okay=False), help="One JSONL file to evaluate.")
@click.option("--format", "fmt", type=click.Choice(["mc", "gen"]), help="Schema of --data (default: guessed).")
@click.option("--split", default="test", show_default=True, help="Split; falls back test -> dev -> validation.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N examples per task.")
@click.option("--seed", type=int, help="With --limit: a seeded random sample instead of the first N.")
@click.option("--out", default="eval_results.json", show_default=True, help="Results JSON (chart: same name .png).")
@click.option("--skip-bad", is_flag=True, help="Skip bad rows (reported with file:line) instead of failing.")
@click.option("--lettered", is_flag=True, help="Likelihood mode: list the choices as A. B. ... and score the letters.")
@click.option("--threads", type=int, default=0, help="CPU threads for single models (0: automatic).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Generation budget for generative tasks on single models (stacks use their own).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Likelihood mode, single models: score this many multiple-choice questions in one llama.cpp "
                   "batch; generate mode: run this many questions at once, their tokens decoded together "
                   "(pays on BF16/F16 weights; see docs/eval.md).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Per-example cache (resume).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the per-example cache.")
def eval_command(targets, modes, tasks, data_dir, data_file, fmt, split, limit, seed, out, skip_bad, lettered,
                 threads, max_new_tokens, batch, cache_dir, no_cache):
    """Score TARGETs (stack .toml files or models: builtin:smollm2-135m-instruct, a GGUF path)
    on tasks; prints a side-by-side table, writes OUT (every prediction and stage text) and OUT.png."""
    from rich.console import Console

    from .harness import default_cache_dir
    from .report import render_table, summarize, write_chart, write_json

    out_path, chart = check_out(out)
    modes = list(dict.fromkeys(modes))
    runs = build_runs(tasks, data_dir, data_file, fmt, split, limit, seed, skip_bad)
    threads = threads if threads > 0 else default_threads()
    folder = None if no_cache else Path(cache_dir) if cache_dir else default_cache_dir()
    started = time.time()
    results = run_all(list(targets), runs, lettered, threads, folder, max_new_tokens, batch, modes)
    task_names = [run.task.name for run in runs]
    cols = columns(targets, modes)
    labels = [c.label for c in cols]
    summaries = [summarize(c.label, run.task, results[(c.label, run.task.name)], c.mode) for c in cols for run in runs]
    Console().print(render_table(summaries, labels, task_names))
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "settings": {"split": split, "limit": limit, "seed": seed, "lettered": lettered, "threads": threads,
                     "max_new_tokens": max_new_tokens, "batch": batch, "modes": modes},
        "targets": list(targets),
        "columns": [{"label": c.label, "target": c.ref, "mode": c.mode} for c in cols],
        "tasks": [{"name": r.task.name, "file": str(r.path), "split": r.split, "n": len(r.examples),
                   "metric": r.task.metric, "skipped_bad_rows": [str(b) for b in r.bad]} for r in runs],
        "summary": [s.to_dict() for s in summaries],
        "results": [{"target": c.ref, "mode": c.mode, "column": c.label, "task": run.task.name,
                     "examples": results[(c.label, run.task.name)]} for c in cols for run in runs],
    }
    write_json(out_path, payload)
    write_chart(chart, summaries, labels, task_names)
    click.echo(f"wrote {out_path} and {chart}", err=True)
