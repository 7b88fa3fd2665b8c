"""Earlier stages' own outputs as training input for a later stage.

A recipe field mapped to ``"@model"`` (``fields = { reason = "@model" }``) is
filled, per training row, with what the stack's earlier stages actually say
for that row's ``{input}`` at temperature 0: the runtime's ``Stack`` runs
them, with the adapters the stack file names or the ones this build has just
trained. A later stage thus learns to read the text it will really be given,
not gold text it will never see at run time.

Outputs are cached in a JSONL file keyed by the earlier stages' settings,
their adapters' hashes and the input, so a resumed or repeated build does not
generate them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from fslm_edge.config import StackConfig, StageConfig
from fslm_edge.errors import InputError
from fslm_edge.stagecache import StageOutputCache, stages_fingerprint

MODEL_OUTPUT = "@model"


def model_fields(stage: StageConfig) -> set[str]:
    """Template fields that some data source of ``stage`` fills with ``@model``."""
    if stage.train is None:
        return set()
    return {name for source in stage.train.data for name, key in source.fields if key == MODEL_OUTPUT}


def _earlier_config(config: StackConfig, stage: StageConfig, adapters: Mapping[str, Path]) -> StackConfig:
    names = [s.name for s in config.stages]
    earlier = config.stages[: names.index(stage.name)]
    wanted = model_fields(stage)
    unknown = sorted(wanted - {s.name for s in earlier} - {"input"})
    if "input" in wanted or unknown:
        bad = "input" if "input" in wanted else unknown[0]
        raise InputError(f"stage '{stage.name}': fields = {{ {bad} = \"@model\" }}: '@model' fills only the "
                         f"output of an earlier stage ({', '.join(s.name for s in earlier) or 'none here'})")
    stages = tuple(dataclasses.replace(s, adapter=adapters.get(s.name, s.adapter), samples=1,
                                       sampling=dataclasses.replace(s.sampling, temperature=0.0))
                   for s in earlier)
    return dataclasses.replace(config, stages=stages)


class UpstreamOutputs:
    """Runs the stages before ``stage`` on training inputs; cached on disk."""

    def __init__(self, config: StackConfig, stage: StageConfig, cache_file: Path,
                 adapters: Mapping[str, Path] | None = None, on_row: Callable[[], None] | None = None):
        self.config = _earlier_config(config, stage, adapters or {})
        self.cache_file = Path(cache_file)
        self.on_row = on_row
        self.generated = 0
        self._stack = None
        fingerprint = stages_fingerprint(self.config.context_size, self.config.stages)
        self._cache = StageOutputCache(self.cache_file, fingerprint)

    def outputs(self, stack_input: str) -> dict[str, str]:
        """Each earlier stage's text for ``stack_input``, by stage name."""
        cached = self._cache.get(stack_input)
        if cached is None:
            if self._stack is None:
                from fslm_edge.stack import Stack

                self._stack = Stack.from_config(self.config)
            result = self._stack.run(stack_input)
            cached = {"outputs": {s.name: s.text for s in result.stages}}
            self._cache.put(stack_input, cached)
            self.generated += 1
        if self.on_row is not None:
            self.on_row()
        return cached["outputs"]

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> UpstreamOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
