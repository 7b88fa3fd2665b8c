"""Rich terminal rendering for the CLI and REPL (the library never imports rich)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .events import ContextWarning, Event, StackResult, StageEnd, StageStart, StageWarning, TextDelta


def stats_line(event: StageEnd) -> str:
    s = event.stats
    return (f"{s.prompt_tokens} prompt + {s.generated_tokens} generated tokens · "
            f"first token {s.time_to_first_token_s * 1000:.0f} ms · {s.tokens_per_s:.1f} tok/s · {s.stop_reason}")


def render_events(events: Iterable[Event], console: Console | None = None, show_prompts: bool = False,
                  show_stages: bool = True) -> StackResult | None:
    """Stream each stage's text under its name; set the final answer apart."""
    console = console or Console(highlight=False)
    result = None
    for event in events:
        if isinstance(event, (ContextWarning, StageWarning)):
            console.print(f"[yellow]warning:[/] {event.message}")
        elif isinstance(event, StageStart) and show_stages:
            sample = f" [dim]· sample {event.sample}[/]" if event.sample else ""
            console.rule(f"[bold cyan]{event.stage}[/]{sample}", align="left")
            if show_prompts:
                console.print(Panel(Text(event.prompt), title="prompt", border_style="dim"))
        elif isinstance(event, TextDelta) and show_stages:
            console.out(event.text, end="", highlight=False)
            console.file.flush()
        elif isinstance(event, StageEnd) and show_stages:
            console.print()
            console.print(f"[dim]{stats_line(event)}[/]")
        elif isinstance(event, StackResult):
            result = event
            if event.cancelled:
                console.print("[yellow]cancelled[/]")
            else:
                if event.votes:
                    console.print(f"[dim]{votes_line(event)}[/]")
                console.print(Panel(Text(event.answer or "(empty)"), title="answer", border_style="green",
                                    subtitle=f"{event.seconds:.2f} s"))
    return result


def votes_line(result: StackResult) -> str:
    """Each sample's final answer (with its log-probability when chosen by
    likelihood) and the chosen sample."""
    answers = [v or "(empty)" for v in result.votes]
    if result.sample_logprobs:
        answers = [f"{a} ({lp:.1f})" for a, lp in zip(answers, result.sample_logprobs)]
        return f"samples by likelihood: {' | '.join(answers)} → sample {result.chosen_sample}"
    return f"votes: {' | '.join(answers)} → sample {result.chosen_sample}"


def stats_table(result: StackResult) -> Table:
    table = Table(title="last turn", show_lines=False)
    for column in ("stage", "prompt tok", "gen tok", "first token", "tok/s", "seconds", "stop"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for out in result.stages:
        s = out.stats
        name = f"{out.name} #{out.sample}" if out.sample else out.name
        table.add_row(name, str(s.prompt_tokens), str(s.generated_tokens),
                      f"{s.time_to_first_token_s * 1000:.0f} ms", f"{s.tokens_per_s:.1f}", f"{s.seconds:.2f}",
                      s.stop_reason)
    return table


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def render_report(report: dict, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(f"[bold]{report['stack']}[/] — {report['description']}")
    console.print(f"file: {report['file']}  context: {report['context_size']}  threads: {report['threads']}")
    if "backend" in report:
        backend = report["backend"]
        offload = "available" if backend["gpu_offload"] else "not available (CPU-only build)"
        console.print(f"llama.cpp backend: {backend['name']}  GPU offload: {offload}  "
                      f"gpu_layers: {report.get('gpu_layers', 0)}")
    models = Table(title="models (each loaded once)")
    for column in ("model", "arch", "quant", "params", "file", "KV cache", "stages"):
        models.add_column(column)
    for m in report["models"]:
        models.add_row(m["path"], m["architecture"], m["quantization"], f"{m['parameters'] / 1e6:.0f}M",
                       _size(m["file_bytes"]), _size(m["kv_cache_bytes"]), ", ".join(m["stages"]))
    console.print(models)
    stages = Table(title="stages")
    for column in ("stage", "adapter", "max tokens", "temperature", "recipe"):
        stages.add_column(column)
    for s in report["stages"]:
        adapter = "-" if not s["adapter"] else f"{s['adapter']['path']} ({_size(s['adapter']['bytes'])})"
        stages.add_row(s["name"], adapter, str(s["max_tokens"]), str(s["temperature"]),
                       "yes" if s["trainable"] else "-")
    console.print(stages)
    console.print(f"memory estimate: {_size(report['memory_estimate_bytes'])} "
                  "(mapped weights + KV cache + compute buffers)")
