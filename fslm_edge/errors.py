"""Typed errors of fslm-edge.

The library raises these; only the CLI turns them into exit codes
(``exit_code`` 2 for bad input, 1 for runtime failures).
"""

from __future__ import annotations


class FslmError(Exception):
    """Base class of every error fslm-edge raises on purpose."""

    exit_code = 1


class InputError(FslmError):
    """The user gave something unusable: a bad file, key, argument or question."""

    exit_code = 2


class StackFileError(InputError):
    """A stack file is missing, not TOML, or does not follow the schema."""

    def __init__(self, path, message: str, line: int | None = None, key: str | None = None):
        self.path = str(path)
        self.line = line
        self.key = key
        self.detail = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


class ModelError(InputError):
    """A model reference cannot be resolved, or the file is not a usable GGUF."""


class AdapterError(InputError):
    """A LoRA adapter file is unusable or was made for another base model."""


class ContextOverflowError(InputError):
    """Even the question alone does not fit the stage's context window."""

    def __init__(self, message: str, prompt_tokens: int | None = None, max_tokens: int | None = None,
                 context_size: int | None = None):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_size = context_size


class DatasetError(InputError):
    """A dataset file or row is unusable (the message names file and line)."""


class RuntimeFailure(FslmError):
    """llama.cpp failed at run time (allocation, decode)."""
