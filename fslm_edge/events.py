"""Typed events of a stack run, in the order they are streamed.

``StageStart`` -> ``TextDelta``* -> ``StageEnd`` for every stage (with a
``ContextWarning`` before ``StageStart`` when upstream text had to be cut),
then one ``StackResult``. With ``samples = k`` on a stage, that stage and each
later one run k times (``sample`` 1..k, one stage at a time for all samples);
``sample`` is 0 for a stage that runs once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StageStart:
    stage: str
    index: int
    prompt: str
    sample: int = 0
    final: bool = False  # this stage's text is the answer (the last stage that runs for this question)
    type: str = "stage_start"


@dataclass(frozen=True)
class TextDelta:
    stage: str
    text: str
    type: str = "delta"


@dataclass(frozen=True)
class StageStats:
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    tokens_per_s: float
    seconds: float
    stop_reason: str  # "eos", "stop", "length", "cancelled", "choice" (picked by likelihood), "given" (by the caller)


@dataclass(frozen=True)
class StageEnd:
    stage: str
    text: str
    prompt: str
    stats: StageStats
    sample: int = 0
    type: str = "stage_end"


@dataclass(frozen=True)
class ContextWarning:
    stage: str
    message: str
    dropped_tokens: int
    type: str = "warning"


@dataclass(frozen=True)
class StageWarning:
    """Something the user should know about a stage's output: it is empty, or
    it does not validate against its JSON schema."""

    stage: str
    message: str
    type: str = "warning"


@dataclass(frozen=True)
class StageOutput:
    name: str
    prompt: str
    text: str
    stats: StageStats
    sample: int = 0


@dataclass(frozen=True)
class StackResult:
    """``stages``: every stage output in run order, every sample's included.
    ``votes``: each sample's final text (empty without ``samples``);
    ``answer`` is the winner's, from sample ``chosen_sample``.
    ``sample_logprobs``: with ``select = "likelihood"``, each sample's summed
    log-probability of its sampled-stage text; with ``"mean-likelihood"`` the
    same per token (the highest wins)."""

    question: str
    stages: tuple[StageOutput, ...]
    answer: str
    seconds: float
    cancelled: bool = False
    votes: tuple[str, ...] = ()
    chosen_sample: int = 0
    sample_logprobs: tuple[float, ...] = ()
    type: str = "result"

    def stage(self, name: str) -> StageOutput:
        """The stage's output (for a sampled stage: the chosen sample's)."""
        for out in self.stages:
            if out.name == name and out.sample in (0, self.chosen_sample):
                return out
        raise KeyError(name)


Event = StageStart | TextDelta | StageEnd | ContextWarning | StageWarning | StackResult


def event_to_dict(event: Event) -> dict:
    """A JSON-ready dict of any event (what ``--json`` prints per line)."""
    return asdict(event)
