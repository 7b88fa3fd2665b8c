"""Summaries (accuracy with a 95% Wilson interval), the side-by-side table,
the results JSON and the bar chart PNG, each file written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

Z95 = 1.959963984540054


def wilson(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for ``correct`` successes out of ``n``."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Summary:
    target: str
    task: str
    metric: str
    n: int
    value: float
    ci95: tuple[float, float]
    metrics: dict
    tokens_per_question: float
    seconds_per_question: float
    mode: str = "likelihood"

    def to_dict(self) -> dict:
        return {"target": self.target, "mode": self.mode, "task": self.task, "metric": self.metric, "n": self.n,
                "value": self.value, "ci95": list(self.ci95), "metrics": self.metrics,
                "tokens_per_question": self.tokens_per_question, "seconds_per_question": self.seconds_per_question}


def summarize(target: str, task, records: list[dict], mode: str = "likelihood") -> Summary:
    """``target`` is the column's label. Generate mode scores a multiple-choice
    answer right or wrong by the matcher: its one metric is ``acc``."""
    n = len(records)
    keys = {"acc": "correct"}
    if task.kind == "mc" and mode == "likelihood":
        keys.update(acc_norm="correct_norm", acc_norm_nospace="correct_norm_nospace")
    elif task.kind != "mc":
        keys = {"exact_match": "correct"}
    metrics = {name: (sum(bool(r[key]) for r in records) / n if n else 0.0) for name, key in keys.items()}
    headline = task.metric if task.metric in metrics else next(iter(metrics))
    hits = round(metrics[headline] * n)
    return Summary(
        target, task.name, headline, n, metrics[headline], wilson(hits, n), metrics,
        sum(r.get("generated_tokens", 0) for r in records) / n if n else 0.0,
        sum(r.get("seconds", 0.0) for r in records) / n if n else 0.0,
        mode,
    )


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, payload: dict) -> None:
    data = json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8")
    _atomic_write(path, lambda handle: handle.write(data))


def _means(summaries: list[Summary], targets: list[str]) -> dict[str, float]:
    return {t: sum(s.value for s in summaries if s.target == t) / max(1, sum(s.target == t for s in summaries))
            for t in targets}


def render_table(summaries: list[Summary], targets: list[str], tasks: list[str]):
    """A rich Table: one row per task (+ mean, tokens/q, s/q), one column per target."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="fslm-edge eval", show_lines=False)
    table.add_column("task (metric)")
    for target in targets:
        # Text, not markup: a target's settings ("qa.toml[answer.adapter_scale=0]") look like a style tag.
        table.add_column(Text(target), justify="right", overflow="fold")
    index = {(s.target, s.task): s for s in summaries}
    for task in tasks:
        found = [index.get((target, task)) for target in targets]
        metrics = list(dict.fromkeys(s.metric for s in found if s))
        # One metric: named in the row's label; several (modes side by side): in each cell.
        cells = [f"{100 * s.value:.1f} [{100 * s.ci95[0]:.1f}, {100 * s.ci95[1]:.1f}] n={s.n}"
                 + (f" {s.metric}" if len(metrics) > 1 else "") if s else "-" for s in found]
        table.add_row(f"{task} ({'/'.join(metrics)})", *cells)
    means = _means(summaries, targets)
    table.add_row("mean", *[f"{100 * means[t]:.1f}" for t in targets], style="bold")
    for label, attr, fmt in (("tokens generated / q", "tokens_per_question", "{:.1f}"),
                             ("seconds / q", "seconds_per_question", "{:.3f}")):
        row = []
        for target in targets:
            own = [getattr(s, attr) * s.n for s in summaries if s.target == target]
            count = sum(s.n for s in summaries if s.target == target)
            row.append(fmt.format(sum(own) / count) if count else "-")
        table.add_row(label, *row, style="dim")
    return table


def write_chart(path: Path, summaries: list[Summary], targets: list[str], tasks: list[str]) -> None:
    """Grouped bars (accuracy, 95% CI error bars) per task, one colour per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {(s.target, s.task): s for s in summaries}
    width = 0.8 / max(1, len(targets))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) + 2), 4.0))
    try:
        for k, target in enumerate(targets):
            xs, values, errors = [], [], [[], []]
            for i, task in enumerate(tasks):
                s = index.get((target, task))
                if s is None:
                    continue
                xs.append(i + (k - (len(targets) - 1) / 2) * width)
                values.append(100 * s.value)
                errors[0].append(100 * (s.value - s.ci95[0]))
                errors[1].append(100 * (s.ci95[1] - s.value))
            ax.bar(xs, values, width, yerr=errors, capsize=3, label=target)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels(tasks)
        ax.set_ylabel("accuracy (%), 95% CI")
        ax.set_ylim(0, 100)
        ax.legend(fontsize="small")
        fig.tight_layout()
        _atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(fig)
