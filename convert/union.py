"""The FSLM ablation: ONE LoRA adapter trained on the union of every stage's
training data, with the same total number of steps (hence tokens) as the
per-stage adapters together.

Each example keeps its own stage's prompt (so the single adapter is asked to
do every stage's job), and "@model" fields reuse the per-stage build's cached
upstream outputs. Use the result in every stage at once:
``fslm-edge run 'stacks/qa.toml' --set '*.adapter=...union.lora.gguf'``, or
evaluate ``'stacks/qa.toml[*.adapter=...]'``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from fslm_edge.config import load_stack_config
from fslm_edge.errors import InputError
from fslm_edge.models import resolve_model

from .build import BuildOptions, StageArtifacts, _manifest, _manifest_info, _upstream, data_dirs, ensure_writable


def planned_steps(data, recipe, max_steps: int | None) -> int:
    """The optimizer steps a stage's own build makes (as ``Trainer`` counts them)."""
    from .packing import epoch_batches
    from .train import _rows_per_batch

    per_epoch = len(epoch_batches(data.train, recipe.max_seq_len, _rows_per_batch(recipe), recipe.seed, 0))
    return max_steps or recipe.max_steps or max(1, math.ceil(recipe.epochs * per_epoch))


def build_union(stack_path: Path, options: BuildOptions, name: str = "union") -> StageArtifacts:
    from .data import GGUFTokenizer, StageData, load_stage_data
    from .export import export_lora
    from .gguf_torch import load_torch_base
    from .train import Trainer, training_device

    training_device(options.device)  # a missing GPU is reported before any data is read
    config = load_stack_config(stack_path)
    stages = [s for s in config.stages if s.train is not None]
    if len(stages) < 2:
        raise InputError(f"--union needs at least two stages with a [stage.train] recipe in {config.path.name}")
    bases = {resolve_model(s.model, config.base_dir) for s in stages}
    if len(bases) != 1:
        raise InputError("--union needs every trained stage on the same base model")
    base = bases.pop()
    root = ensure_writable(Path(options.out_dir) if options.out_dir else config.base_dir / "build" / config.name)
    parts, steps = [], 0
    with GGUFTokenizer(base) as tokenizer:
        for stage in stages:
            folder = ensure_writable(root / stage.name)
            with _upstream(config, stage, folder, {}, options.progress) as upstream:
                data = load_stage_data(stage, data_dirs(options), tokenizer, upstream)
            parts.append(data)
            steps += planned_steps(data, stage.train, options.max_steps)
        pad_id = tokenizer.end_id
    data = StageData(tuple(e for d in parts for e in d.train), tuple(e for d in parts for e in d.val),
                     {k: v for d in parts for k, v in d.file_hashes.items()},
                     sum(d.skipped_too_long for d in parts))
    last = stages[-1].train
    recipe = dataclasses.replace(last, max_steps=steps, max_seq_len=max(s.train.max_seq_len for s in stages),
                                 rank=max(s.train.rank for s in stages), data=tuple(x for s in stages
                                                                                    for x in s.train.data))
    folder = ensure_writable(root / name)
    trainer = Trainer(load_torch_base(base), data, recipe, folder, pad_id, progress=options.progress,
                      on_step=options.on_step, threads=options.threads, device=options.device)
    result = trainer.run(resume=options.resume)
    union_stage = dataclasses.replace(stages[-1], name=name, train=recipe)
    info = {**_manifest_info(config, union_stage, base, data, result, trainer),
            "union_of": [s.name for s in stages]}
    target = folder / f"{name}.lora.gguf"
    adapter = export_lora(result.adapter_dir, base, target, name=name,
                          before_commit=_manifest(target, info, "lora-adapter-union"))
    return StageArtifacts(name, folder, adapter, None, None, result.train_loss, result.val_loss, result.steps)
