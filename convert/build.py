"""``fslm-edge build``: train every stage that has a recipe, export its
adapter, optionally merge and quantize, with a manifest beside each artifact.

The stack file is never modified: :func:`build_stack` yields one
:class:`StageArtifacts` per stage and the CLI prints the lines to use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fslm_edge.config import StackConfig, StageConfig, load_stack_config
from fslm_edge.errors import InputError
from fslm_edge.fileio import probe_writable, sha256_file
from fslm_edge.models import resolve_model

from .gguf_model import QUANT_TYPES, merge_to_gguf, quantize_gguf


@dataclass(frozen=True)
class BuildOptions:
    data_dir: Path | tuple[Path, ...]  # several: searched in order
    out_dir: Path | None = None
    stage: str | None = None
    max_steps: int | None = None
    quant: str = "none"
    merge: bool = False
    resume: bool = False
    progress: bool = True
    threads: int | None = None
    device: str = "cpu"
    on_step: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class StageArtifacts:
    stage: str
    folder: Path
    adapter: Path
    merged: Path | None
    quantized: Path | None
    train_loss: float | None
    val_loss: float | None
    steps: int


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` and prove a file can be written there (InputError if not)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_writable(folder)
    except OSError as exc:
        raise InputError(f"cannot write to the output folder {folder} ({exc.strerror}); "
                         "choose another with --out") from None
    return folder


def stages_to_build(config: StackConfig, name: str | None) -> list[StageConfig]:
    if name is not None:
        try:
            stage = config.stage(name)
        except KeyError:
            raise InputError(f"no stage named '{name}' in {config.path.name} "
                             f"(stages: {', '.join(s.name for s in config.stages)})") from None
        if stage.train is None:
            raise InputError(f"stage '{name}' has no [stage.train] recipe; add one to build it")
        return [stage]
    stages = [s for s in config.stages if s.train is not None]
    if not stages:
        raise InputError(f"no stage of {config.path.name} has a [stage.train] recipe; nothing to build")
    return stages


def data_dirs(options: BuildOptions) -> tuple[Path, ...]:
    """``--data-dir`` folders, searched in order for each recipe's files."""
    dirs = options.data_dir
    return (Path(dirs),) if isinstance(dirs, (str, Path)) else tuple(Path(d) for d in dirs)


def build_stack(stack_path: Path, options: BuildOptions) -> Iterator[StageArtifacts]:
    if options.quant not in (*QUANT_TYPES, "none"):
        raise InputError(f"--quant must be one of {', '.join(QUANT_TYPES)} or none, not '{options.quant}'")
    for folder in data_dirs(options):
        if not folder.is_dir():
            raise InputError(f"--data-dir {folder} is not a folder")
    if options.device != "cpu":
        from .train import training_device

        training_device(options.device)  # a missing GPU is reported before any data is read
    config = load_stack_config(stack_path)
    stages = stages_to_build(config, options.stage)
    root = Path(options.out_dir) if options.out_dir else config.base_dir / "build" / config.name
    ensure_writable(root)
    built: dict[str, Path] = {}  # adapters trained by this run, used by later stages' "@model" fields
    for stage in stages:
        artifacts = build_stage(config, stage, options, ensure_writable(root / stage.name), built)
        built[stage.name] = artifacts.adapter
        yield artifacts


def _upstream(config: StackConfig, stage: StageConfig, folder: Path, adapters: dict, progress: bool):
    """The earlier stages' runner when the recipe maps a field to "@model"."""
    from contextlib import nullcontext

    from .upstream import UpstreamOutputs, model_fields

    if not model_fields(stage):
        return nullcontext(None)
    counter = _RowCounter(f"running the stages before '{stage.name}' on its training rows") if progress else None
    return UpstreamOutputs(config, stage, folder / "upstream.jsonl", adapters, on_row=counter)


class _RowCounter:
    def __init__(self, label: str):
        self.label, self.count = label, 0

    def __call__(self) -> None:
        import sys

        self.count += 1
        if self.count % 25 == 0:
            print(f"{self.label}: {self.count} rows", file=sys.stderr, flush=True)


def build_stage(config: StackConfig, stage: StageConfig, options: BuildOptions, folder: Path,
                adapters: dict | None = None) -> StageArtifacts:
    from .data import GGUFTokenizer, load_stage_data
    from .export import export_lora, load_lora
    from .train import Trainer

    base = resolve_model(stage.model, config.base_dir)
    with GGUFTokenizer(base) as tokenizer, _upstream(config, stage, folder, adapters or {},
                                                     options.progress) as upstream:
        data = load_stage_data(stage, data_dirs(options), tokenizer, upstream)
        pad_id = tokenizer.end_id
        upstream_info = _upstream_info(upstream, config.base_dir)
    hf_base = config.base_dir / stage.train.hf_base if stage.train.hf_base else None
    model = _torch_base(base, hf_base)
    trainer = Trainer(model, data, stage.train, folder, pad_id, max_steps=options.max_steps,
                      progress=options.progress, on_step=options.on_step, threads=options.threads,
                      device=options.device)
    result = trainer.run(resume=options.resume)
    info = {**_manifest_info(config, stage, base, data, result, trainer),
            "upstream": upstream_info}
    if hf_base is not None:
        info["hf_base"] = {"path": _relative(hf_base, config.base_dir),
                           "weights": {f.name: sha256_file(f) for f in sorted(hf_base.glob("*.safetensors"))}}
    adapter_path = folder / f"{stage.name}.lora.gguf"
    adapter = export_lora(result.adapter_dir, base, adapter_path, name=stage.name,
                          before_commit=_manifest(adapter_path, info, "lora-adapter"))
    merged = quantized = None
    if options.merge or options.quant != "none":
        merged_path = folder / f"{stage.name}.f16.gguf"
        manifest = _manifest(merged_path, info, "merged-f16")
        if hf_base is not None:
            from .hf_base import merge_hf_to_gguf

            merged = merge_hf_to_gguf(_torch_base(base, hf_base), result.adapter_dir, base, merged_path,
                                      before_commit=manifest)
        else:
            lora = load_lora(result.adapter_dir, base)
            merged = merge_to_gguf(base, lora.tensors, lora.alpha, merged_path, "f16", before_commit=manifest)
        if options.quant != "none":
            quantized_path = folder / f"{stage.name}.{options.quant}.gguf"
            quantized = quantize_gguf(merged, quantized_path, options.quant, before_commit=_manifest(
                quantized_path, {**info, "quantization": options.quant}, "merged-quantized"))
    return StageArtifacts(stage.name, folder, adapter, merged, quantized, result.train_loss, result.val_loss,
                          result.steps)


def _torch_base(gguf: Path, hf_base: Path | None):
    """The torch model a stage trains: the HF folder if the recipe names one, else the GGUF dequantized."""
    if hf_base is not None:
        from .hf_base import load_hf_base

        return load_hf_base(hf_base, gguf)
    from .gguf_torch import load_torch_base

    return load_torch_base(gguf)


def _relative(path: Path, base_dir: Path) -> str:
    """A path as the stack file would write it (relative to its folder), so
    manifests name no machine's folders."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(base_dir).resolve())
    except ValueError:  # another drive
        return Path(path).name


def _upstream_info(upstream, base_dir: Path) -> dict | None:
    """Which earlier stages (and adapters) produced the "@model" training text."""
    if upstream is None:
        return None
    stages = {s.name: {"adapter": _relative(s.adapter, base_dir) if s.adapter else None,
                       "sha256": sha256_file(s.adapter) if s.adapter else None} for s in upstream.config.stages}
    return {"stages": stages, "generated_rows": upstream.generated,
            "cache": _relative(upstream.cache_file, base_dir)}


def _manifest(path: Path, info: dict, kind: str):
    """The ``before_commit`` hook that writes ``path``'s manifest before ``path`` appears."""
    from .export import manifest_first

    return manifest_first(path, {"kind": kind, **info})


def _manifest_info(config, stage, base: Path, data, result, trainer) -> dict:
    return {
        "stack": config.path.name, "stage": stage.name,
        "base": {"model": stage.model, "file": base.name, "sha256": sha256_file(base)},
        "data": data.file_hashes,
        "recipe": dataclasses.asdict(stage.train),
        "hyperparameters": {"steps": result.steps, "total_steps": trainer.total, "rows_per_batch": trainer.rows,
                            "train_examples": len(data.train), "val_examples": len(data.val),
                            "skipped_too_long": data.skipped_too_long, "tokens_seen": result.tokens},
        "losses": {"train": result.train_loss, "val": result.val_loss},
    }


def stack_lines(stack_path: Path, artifacts: StageArtifacts) -> list[str]:
    """The stack-file lines that use a built stage."""
    base_dir = Path(stack_path).resolve().parent
    use = artifacts.quantized or artifacts.merged
    target = use if use is not None else artifacts.adapter
    try:
        shown = os.path.relpath(target, base_dir)
    except ValueError:
        shown = str(target)
    key = "model" if use is not None else "adapter"
    return [f"# stage '{artifacts.stage}'", f'{key} = "{shown}"']
