"""Build commands of the ``fslm-edge`` CLI: build, export-lora, merge, quantize.

Importing this module must stay cheap and torch-free (the runtime CLI imports
it): torch, peft and transformers are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from fslm_edge.errors import InputError

_QUANTS = click.Choice(["q4_k_m", "q8_0", "q4_0", "none"])


@click.command()
@click.argument("stack_file", metavar="STACK")
@click.option("--data-dir", required=True, multiple=True,
              help="Folder of the JSONL files (repeatable: each recipe file is taken from the first that has it).")
@click.option("--stage", "stage_name", help="Build only this stage.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N optimizer steps (overrides the recipe).")
@click.option("--quant", type=_QUANTS, default="none", show_default=True,
              help="Quantize the merged model (implies --merge).")
@click.option("--merge", is_flag=True, help="Also write base+adapter merged as an F16 GGUF.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--out", "out_dir",
              help="Output folder (default: build/<stack name>/ beside the stack file).")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (default: one per core, at most 8).")
@click.option("--device", default="cpu", show_default=True,
              help="Torch device to train on: cpu, cuda, cuda:N or auto (CUDA when there is a GPU).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--union", is_flag=True,
              help="Instead: ONE adapter on the union of all stages' data, as many steps as all stages together.")
def build(stack_file, data_dir, stage_name, max_steps, quant, merge, resume, out_dir, threads, device, no_progress,
          union):
    """Train every stage of STACK that has a [stage.train] recipe and export it."""
    from fslm_edge.fileio import output_folder

    from .build import BuildOptions, build_stack, stack_lines

    options = BuildOptions(data_dir=tuple(Path(d) for d in data_dir),
                           out_dir=output_folder(out_dir) if out_dir else None, stage=stage_name,
                           max_steps=max_steps, quant=quant, merge=merge, resume=resume,
                           progress=not no_progress, threads=threads, device=device)
    if union:
        from .union import build_union

        if stage_name or merge or quant != "none":
            raise click.UsageError("--union trains one adapter for all stages; drop --stage, --merge and --quant")
        artifacts = build_union(Path(stack_file), options)
        click.echo(f"union adapter: {artifacts.steps} steps, train loss {_fmt(artifacts.train_loss)}, "
                   f"val loss {_fmt(artifacts.val_loss)}\n  wrote {artifacts.adapter}")
        click.echo(f"\nUse it in every stage: --set '*.adapter={Path(artifacts.adapter).resolve()}'")
        return
    lines = []
    for artifacts in build_stack(Path(stack_file), options):
        click.echo(f"stage {artifacts.stage}: {artifacts.steps} steps, train loss {_fmt(artifacts.train_loss)}, "
                   f"val loss {_fmt(artifacts.val_loss)}")
        for path in (artifacts.adapter, artifacts.merged, artifacts.quantized):
            if path is not None:
                click.echo(f"  wrote {path}")
        lines += stack_lines(Path(stack_file), artifacts)
    click.echo("\nTo use the built stages, put these lines in the stages of " + stack_file + ":")
    click.echo("\n".join(lines))


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _base(ref: str) -> Path:
    from fslm_edge.models import resolve_model

    return resolve_model(ref, Path.cwd())


@click.command("export-lora")
@click.argument("adapter_dir")
@click.option("--base", required=True, help="The base GGUF the adapter was trained on (path or built-in name).")
@click.option("--out", "out_path", required=True, help="The LoRA GGUF to write.")
def export_lora_cmd(adapter_dir, base, out_path):
    """Export a PEFT LoRA adapter folder (from any trainer) as a llama.cpp LoRA GGUF."""
    from fslm_edge.fileio import output_file

    from .export import export_lora, manifest_first

    out = output_file(out_path)
    base_path = _base(base)
    info = _base_info(base_path, adapter_dir, "lora-adapter")
    path = export_lora(Path(adapter_dir), base_path, out, before_commit=manifest_first(out, info))
    click.echo(f"wrote {path}")


@click.command()
@click.argument("adapter")
@click.option("--base", required=True, help="The base GGUF (path or built-in name).")
@click.option("--out", "out_path", required=True, help="The merged GGUF to write.")
@click.option("--type", "ftype", type=click.Choice(["f16", "f32"]), default="f16", show_default=True)
@click.option("--scale", type=float, default=1.0, show_default=True, help="Adapter scale.")
def merge(adapter, base, out_path, ftype, scale):
    """Merge ADAPTER (a PEFT folder or a LoRA GGUF) into the base, written as F16/F32 GGUF."""
    from fslm_edge.fileio import output_file

    from .export import load_lora, manifest_first
    from .gguf_model import merge_to_gguf

    out = output_file(out_path)
    base_path = _base(base)
    if not Path(adapter).exists():
        raise InputError(f"adapter {adapter} not found; give a PEFT adapter folder or a LoRA GGUF")
    lora = load_lora(Path(adapter), base_path)
    info = _base_info(base_path, adapter, f"merged-{ftype}")
    path = merge_to_gguf(base_path, lora.tensors, lora.alpha, out, ftype, adapter_scale=scale,
                         before_commit=manifest_first(out, info))
    click.echo(f"wrote {path}")


@click.command()
@click.argument("source")
@click.option("--out", "out_path", required=True, help="The quantized GGUF to write.")
@click.option("--type", "qtype", type=click.Choice(["q4_k_m", "q8_0", "q4_0", "bf16", "f16"]), default="q4_k_m",
              show_default=True)
def quantize(source, out_path, qtype):
    """Quantize an F16/F32 GGUF (a path or builtin:NAME) with llama.cpp's own
    quantizer; bf16/f16 also take a quantized model (a fast copy for eval --batch)."""
    from fslm_edge.fileio import output_file, sha256_file
    from fslm_edge.models import resolve_model

    from .export import manifest_first
    from .gguf_model import quantize_gguf

    out = output_file(out_path)
    source_path = resolve_model(source)
    info = {"kind": "quantized", "quantization": qtype,
            "source": {"file": source_path.name, "sha256": sha256_file(source_path)}}
    path = quantize_gguf(source_path, out, qtype, before_commit=manifest_first(out, info))
    click.echo(f"wrote {path}")


def _base_info(base: Path, adapter, kind: str) -> dict:
    from fslm_edge.fileio import sha256_file

    return {"kind": kind, "base": {"file": base.name, "sha256": sha256_file(base)}, "adapter": Path(adapter).name}


@click.command()
@click.argument("stack_file", metavar="STACK")
@click.option("--stage", "stage_name", required=True, help="The stage whose text the teacher writes.")
@click.option("--task", "tasks", multiple=True,
              help="A task whose rows are the inputs (repeatable): arc_easy, commonsenseqa, strategyqa... "
              "Without: the inputs the stage's own [stage.train] recipe trains on.")
@click.option("--data-dir", required=True, help="Folder of the <task>_<split>.jsonl files.")
@click.option("--split", default="train", show_default=True, help="Which split's rows.")
@click.option("--out", "out_path", required=True, help="The JSONL file to write (with OUT.manifest.json).")
@click.option("--teacher", help="A model reference (builtin:NAME or a GGUF path) that writes the stage's text "
              "instead of the stage's own model and adapter.")
@click.option("--samples", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Texts per row: the first greedy, the others sampled.")
@click.option("--temperature", type=click.FloatRange(0, 100), default=0.7, show_default=True,
              help="Temperature of samples 2 and later.")
@click.option("--keep", type=click.Choice(["correct", "helpful", "all"]),
              help="correct (the default with --task): only texts that lead the rest of the stack to the gold "
              "answer (STaR's filter); helpful: of those, only on rows it answers wrongly with the stage's text "
              "empty; all (the default without --task).")
@click.option("--limit", type=click.IntRange(min=1), help="A seeded sample of N rows per task (or data file).")
@click.option("--seed", type=int, default=0, show_default=True, help="Row sample and sampling seed.")
@click.option("--threads", type=click.IntRange(min=1), help="llama.cpp threads (default: the stack's).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its samples log (or filter a "
              "finished one again with another --keep).")
@click.option("--samples-log", help="The log of every row's samples and verdicts (default: OUT.samples.jsonl); "
              "with --resume, another run's log filtered into OUT.")
def distill(stack_file, stage_name, tasks, data_dir, split, out_path, teacher, samples, temperature, keep, limit,
            seed, threads, resume, samples_log):
    """Write training text for one stage of STACK: its teacher's text for each
    task row, given what the earlier stages say, kept where it leads the stack
    to the gold answer (--keep correct). A [stage.train] recipe names OUT as a
    data file: { file = "OUT", target = "STAGE", fields = { input = "input", ... } }."""
    from fslm_edge.fileio import output_file

    from .distill import DistillOptions, distill as run_distill

    out = output_file(out_path)
    keep = keep or ("correct" if tasks else "all")
    options = DistillOptions(stage_name, tuple(tasks), Path(data_dir), split, teacher, samples, temperature, seed,
                             keep, limit, threads, resume, Path(samples_log) if samples_log else None)

    def progress(report, total):
        if report.rows % 10 == 0 or report.rows == total:
            click.echo(f"distill: {report.rows}/{total} rows, {report.samples} texts, {report.correct} led to the "
                       "gold answer", err=True)

    report = run_distill(Path(stack_file), out, options, progress)
    click.echo(f"wrote {out}: {report.kept} rows kept of {report.samples} texts for {report.rows} inputs"
               + (f" ({report.resumed} inputs from the interrupted run)" if report.resumed else ""))


def register(group: click.Group) -> None:
    for command in (build, export_lora_cmd, merge, quantize, distill):
        group.add_command(command)
