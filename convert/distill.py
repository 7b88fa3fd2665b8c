"""A stage's training text written by a teacher: ``fslm-edge distill``.

For every row of the named tasks (their train split by default), the question
is typed as generate mode types it (``Task.generate_input``: options as
lettered lines); without tasks, the rows are the inputs STAGE's own
``[stage.train]`` recipe trains on (each data file's field mapped to
``{input}``; no gold answer, so every text is kept). The stack's stages
before STAGE run as ``fslm-edge run`` runs them (temperature 0), and a
teacher writes STAGE's text ``samples`` times: sample 1 greedily, the others
sampled at ``temperature`` with seeds ``seed + 1``, ``seed + 2``... The
teacher is the stage itself (its model and adapter) unless another model is
named (the FSLM paper's distillation from a stronger model).

``keep = "correct"`` is STaR's filter (Zelikman et al. 2022): a sample is kept
only where the rest of the stack, given it, prints the gold answer, as the
generate-mode matcher decides. ``keep = "helpful"`` keeps, of those, the ones
on rows where the rest of the stack given an empty text for the stage does
not print it: texts that made the answer right. ``keep = "all"`` keeps every
sample. Both verdicts are recorded whatever ``keep`` is, so ``--resume`` with
another ``--keep`` (and ``--samples-log`` naming the first run's log, to write
another file) filters a finished run's samples again, generating nothing.

Each row's samples and verdicts are appended to ``OUT.samples.jsonl`` as
they are done, so an interrupted run continues with ``--resume``; the kept
rows are written to ``OUT`` at the end, atomically, with ``OUT.manifest.json``
(teacher, stack, prompt, settings, data hashes, counts). A recipe names
``OUT`` as a data file
(``{ file = "OUT", target = STAGE, fields = { input = "input", NAME = "NAME" } }``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fslm_edge.errors import InputError
from fslm_edge.fileio import append_record, atomic_output, fingerprint, read_records, sha256_file
from fslm_edge.stagecache import GenerationMemo

KEEP = ("correct", "helpful", "all")
ROW_FIELDS = ("id", "task", "input", "question", "choices", "answer", "sample", "printed", "correct",
              "correct_without")


@dataclass(frozen=True)
class DistillOptions:
    stage: str
    tasks: tuple[str, ...]
    data_dir: Path
    split: str = "train"
    teacher: str | None = None  # a model reference; None: the stage's own model and adapter
    samples: int = 1
    temperature: float = 0.7
    seed: int = 0
    keep: str = "correct"
    limit: int | None = None
    threads: int | None = None
    resume: bool = False
    samples_log: Path | None = None  # default: OUT.samples.jsonl


@dataclass
class DistillReport:
    rows: int = 0
    samples: int = 0
    kept: int = 0
    correct: int = 0  # texts that led to the gold answer
    correct_without: int = 0  # rows answered right with the stage's text empty
    resumed: int = 0
    per_task: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DistillInput:
    """One row to distil: the stack's input, and the gold answer where the row has one."""

    key: str  # what the samples log knows it by
    group: str  # the task, or the recipe's data file
    text: str  # the stack's input
    meta: dict | None = None  # id, question, choices, answer (a task row); None: no gold answer
    row_id: str = ""


def task_inputs(options: DistillOptions) -> tuple[list[DistillInput], dict[str, Path]]:
    """The named tasks' rows, typed as generate mode types them."""
    from fslm_edge.evaluation.cli import build_runs
    from fslm_edge.evaluation.harness import example_key

    runs = build_runs(list(options.tasks), options.data_dir, None, None, options.split, options.limit,
                      options.seed if options.limit else None, False)
    inputs = [DistillInput(f"{run.task.name}:{example_key(e)}", run.task.name, run.task.generate_input(e),
                           {"id": e.id, "question": e.question, "choices": list(e.choices), "answer": e.answer},
                           e.id)
              for run in runs for e in run.examples]
    return inputs, {run.task.name: run.path for run in runs}


def recipe_inputs(config, options: DistillOptions) -> tuple[list[DistillInput], dict[str, Path]]:
    """The inputs the stage's own ``[stage.train]`` recipe trains on: each data
    file's row field mapped to ``{input}`` (a seeded sample of ``limit`` per file)."""
    from fslm_edge.evaluation.data import select

    from .data import field_text, find_data_file, iter_rows

    stage = config.stage(options.stage)
    if stage.train is None:
        raise InputError(f"stage '{stage.name}' has no [stage.train] recipe to take inputs from; name the rows "
                         "with --task")
    inputs, files = [], {}
    for source in stage.train.data:
        key = source.field_map.get("input")
        if key is None or key == "@model":
            raise InputError(f"stage '{stage.name}': data file {source.file} maps no row field to {{input}}; "
                             "name the rows with --task")
        path = find_data_file(source.file, options.data_dir, stage.name)
        files[source.file] = path
        for number, row in select(list(iter_rows(path)), options.limit, options.seed):
            text = field_text(row, key, f"{path}:{number}").strip()
            inputs.append(DistillInput(f"{source.file}:{fingerprint(text)}", source.file, text,
                                       row_id=str(row.get("id", f"{source.file}:{number}"))))
    return inputs, files


def samples_path(out: Path) -> Path:
    """The log of every row's samples and verdicts beside ``out``."""
    return out.with_name(out.name + ".samples.jsonl")


def _check_stage(config, stage: str) -> None:
    names = [s.name for s in config.stages]
    if stage not in names:
        raise InputError(f"{config.path}: no stage '{stage}' (stages: {', '.join(names)}); name one with --stage")
    written = names[: names.index(stage) + 1]  # the stages whose texts the rows hold
    clash = sorted(set(written) & set(ROW_FIELDS))
    if clash:
        raise InputError(f"{config.path}: a stage named '{clash[0]}' would clash with a field of the rows distill "
                         f"writes ({', '.join(ROW_FIELDS)}); rename the stage")


class Distiller:
    """The teacher and judge stacks of one distill run."""

    def __init__(self, stack_file: Path, options: DistillOptions):
        from fslm_edge.config import greedy_overrides, load_target_config
        from fslm_edge.stack import Stack

        if options.keep not in KEEP:
            raise InputError(f"--keep {options.keep!r}: use one of {', '.join(KEEP)}")
        self.options = options
        config = load_target_config(stack_file)
        _check_stage(config, options.stage)
        settings = {**greedy_overrides(config), **({"stack.threads": options.threads} if options.threads else {})}
        self.config = load_target_config(stack_file, settings)
        self._hashes: dict[Path, str] = {}
        self.stacks = []
        try:
            self.judge = Stack.load(stack_file, settings)
            self.stacks.append(self.judge)
            if options.teacher is None:
                self.teacher = self.judge
            else:
                teacher = {f"{options.stage}.model": options.teacher, f"{options.stage}.adapter": ""}
                self.teacher = Stack.load(stack_file, {**settings, **teacher})
                self.stacks.append(self.teacher)
        except BaseException:
            self.close()
            raise
        memo = GenerationMemo(None)  # the earlier stages' greedy texts: once per row, not once per sample
        for stack in self.stacks:
            stack.generation_memo = memo

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sha256(self, path) -> str:
        """A file's hash, computed once per run (model files are large)."""
        path = Path(path)
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    # -- one row ----------------------------------------------------------------
    def sample_settings(self, sample: int) -> dict:
        if sample == 1:
            return {"temperature": 0.0}
        return {"temperature": self.options.temperature, "seed": self.options.seed + sample - 1}

    def distil_row(self, row: DistillInput) -> dict:
        """Every sample of one row: the earlier stages' texts, the teacher's text
        and, where the row has a gold answer, the judge's verdicts."""
        from fslm_edge.evaluation.harness import decide

        stage, gold = self.options.stage, row.meta

        def judge(texts: dict) -> dict:
            printed = self.judge.run(row.text, given=texts).answer
            return {"printed": printed, "correct": bool(decide(printed, gold["choices"], gold["answer"])["correct"])}

        samples, upstream = [], {}
        for number in range(1, self.options.samples + 1):
            result = self.teacher.run(row.text, through=stage, final=self.sample_settings(number))
            texts = {s.name: s.text for s in result.stages}
            upstream = {name: text for name, text in texts.items() if name != stage}
            samples.append({"sample": number, "text": texts[stage], **(judge(texts) if gold else {})})
        record = {"task": row.group, "id": row.row_id, "input": row.text, **(gold or {}), "upstream": upstream,
                  "samples": samples}
        if gold:
            record["correct_without"] = judge({**upstream, stage: ""})["correct"]
        return record

    def fingerprint(self, data_files: dict[str, Path]) -> str:
        """What decides the samples (a log written under others is refused): the
        stages as loaded (templates, sampling, the model and adapter files'
        hashes), not the stack file's text or where it is, so any file whose
        stages are these continues the same log."""
        o = self.options
        files = [m.path for m in self.teacher.models + self.judge.models]
        files += [s.adapter for s in self.config.stages if s.adapter is not None]
        stages = [dataclasses.replace(s, source="", train=None, grammar_file=None,  # the grammar's text stays
                                      adapter=self.sha256(s.adapter) if s.adapter else None)
                  for s in self.config.stages]
        parts = [repr(stages), str(self.config.context_size), o.stage, str(o.teacher), str(o.samples),
                 repr(o.temperature), str(o.seed)]  # not keep: it only filters what is written
        # Rows are keyed one by one, so a rerun with another --limit reuses the rows both select.
        parts += [f"{name}:{self.sha256(path)}" for name, path in data_files.items()]
        parts += sorted({f"{Path(f).name}:{self.sha256(f)}" for f in set(files)})
        return fingerprint(*parts)


def _kept_rows(stage: str, record: dict, keep: str) -> Iterator[dict]:
    """The output rows of one row's samples: kept ones, each distinct text once."""
    seen = set()
    for sample in record["samples"]:
        text = sample["text"].strip()
        wanted = {"all": True, "correct": sample.get("correct"),
                  "helpful": sample.get("correct") and not record.get("correct_without")}[keep]
        if not text or text in seen or not wanted:
            continue
        seen.add(text)
        row = {k: record[k] for k in ("id", "task", "input", "question", "choices", "answer") if k in record}
        row.update(record["upstream"])
        row[stage] = text
        row.update({k: sample[k] for k in ("sample", "printed", "correct") if k in sample})
        if "correct_without" in record:
            row["correct_without"] = record["correct_without"]
        yield row


def _usable(record: dict) -> bool:
    """A logged row this code can read back (anything else is distilled again)."""
    samples = record.get("samples")
    return (isinstance(record.get("key"), str) and isinstance(record.get("upstream"), dict)
            and isinstance(samples, list) and bool(samples)
            and all(isinstance(x, dict) and isinstance(x.get("text"), str) and isinstance(x.get("sample"), int)
                    for x in samples))


def _read_log(path: Path, expected: str, resume: bool) -> dict[str, dict]:
    records = read_records(path)
    if not records:
        return {}
    if not resume:
        raise InputError(f"{path} holds the samples of an earlier distill run; continue or refilter it with "
                         "--resume, or delete it to start again")
    if records[0].get("fingerprint") != expected:
        raise InputError(f"{path} was written with other settings, stack or data; rerun with the same ones, "
                         "or delete it to start again")
    return {r["key"]: r for r in records[1:] if _usable(r)}


def distill(stack_file: Path, out: Path, options: DistillOptions,
            on_row: Callable[[DistillReport, int], None] | None = None) -> DistillReport:
    """Run the teacher over the rows (the named tasks', else the stage's own
    recipe inputs) and write the kept rows to ``out``."""
    from .export import manifest_first

    log = Path(options.samples_log) if options.samples_log else samples_path(out)
    report = DistillReport()
    with Distiller(stack_file, options) as distiller:
        if options.tasks:
            inputs, files = task_inputs(options)
        else:
            if options.keep != "all":
                raise InputError(f"--keep {options.keep} judges each text against a gold answer: name the rows "
                                 "with --task, or use --keep all for the stage's own recipe inputs")
            inputs, files = recipe_inputs(distiller.config, options)
        expected = distiller.fingerprint(files)
        done = _read_log(log, expected, options.resume)
        if not done:
            log.unlink(missing_ok=True)
            append_record(log, {"fingerprint": expected})
        records = []
        for row in inputs:
            record = done.get(row.key)
            if record is None:
                record = {"key": row.key, **distiller.distil_row(row)}
                append_record(log, record)
            else:
                report.resumed += 1
            records.append(record)
            _count(report, record)
            if on_row is not None:
                on_row(report, len(inputs))
        info = _manifest(distiller, options, files, report, stack_file)
    rows = [row for record in records for row in _kept_rows(options.stage, record, options.keep)]
    report.kept = len(rows)
    info["counts"]["kept"] = report.kept
    with atomic_output(out, "w", before_commit=manifest_first(out, info)) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return report


def _count(report: DistillReport, record: dict) -> None:
    report.rows += 1
    report.samples += len(record["samples"])
    good = sum(1 for s in record["samples"] if s.get("correct"))
    report.correct += good
    without = bool(record.get("correct_without"))
    report.correct_without += without
    task = report.per_task.setdefault(record["task"], {"rows": 0, "any_correct": 0, "correct_without": 0})
    task["rows"] += 1
    task["any_correct"] += bool(good)
    task["correct_without"] += without


def _manifest(distiller: Distiller, options: DistillOptions, files: dict[str, Path], report: DistillReport,
              stack_file) -> dict:
    stage = distiller.config.stage(options.stage)
    teacher_stage = distiller.teacher.config.stage(options.stage)
    teacher_model = distiller.teacher.stage_model(options.stage)
    adapter = teacher_stage.adapter
    return {
        "kind": "distilled-stage-data",
        "stack": {"file": distiller.config.path.name, "sha256": distiller.sha256(distiller.config.path),
                  "ref": str(stack_file)},
        "stage": options.stage,
        "template": stage.template,
        "system": stage.system,
        "teacher": {"model": options.teacher or stage.model, "file": Path(teacher_model.path).name,
                    "sha256": distiller.sha256(teacher_model.path), "adapter": adapter.name if adapter else None,
                    "adapter_sha256": distiller.sha256(adapter) if adapter else None},
        "settings": {"samples": options.samples, "temperature": options.temperature, "seed": options.seed,
                     "keep": options.keep, "split": options.split, "limit": options.limit,
                     "first_sample": "temperature 0", "earlier_stages": "temperature 0"},
        "data": {path.name: distiller.sha256(path) for path in files.values()},
        "inputs": "tasks" if options.tasks else "the stage's recipe",
        "counts": {"rows": report.rows, "samples": report.samples, "correct": report.correct,
                   "correct_without": report.correct_without,
                   "per_task": report.per_task},
    }
