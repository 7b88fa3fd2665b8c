"""fslm-edge: run stacks of small language models offline with llama.cpp."""

from .config import Sampling, StackConfig, StageConfig, load_stack_config
from .errors import (
    AdapterError,
    ContextOverflowError,
    DatasetError,
    FslmError,
    InputError,
    ModelError,
    RuntimeFailure,
    StackFileError,
)
from .events import ContextWarning, StackResult, StageEnd, StageOutput, StageStart, StageStats, TextDelta
from .stack import Stack

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "ContextOverflowError",
    "ContextWarning",
    "DatasetError",
    "FslmError",
    "InputError",
    "ModelError",
    "RuntimeFailure",
    "Sampling",
    "Stack",
    "StackConfig",
    "StackFileError",
    "StackResult",
    "StageConfig",
    "StageEnd",
    "StageOutput",
    "StageStart",
    "StageStats",
    "TextDelta",
    "__version__",
    "load_stack_config",
]
