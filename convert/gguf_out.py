"""Atomic GGUF writing: a small state machine over ``gguf.GGUFWriter``.

    with GGUFOut(path, arch="llama") as out:      # state: collecting
        out.add_kv(...); out.add_tensor(name, array)
        out.commit()                              # state: committed (file renamed into place)

Leaving the block without ``commit()`` (an exception, Ctrl-C) aborts: the
temporary file is removed and nothing appears at ``path``; temp files of
``path`` left by a killed earlier run are removed when writing starts
(:class:`fslm_edge.fileio.AtomicFile`). ``commit(before_commit)`` runs
``before_commit(tmp)`` on the complete file before the rename (the manifest
is written there). Calls out of order (a tensor after commit, a second
commit) raise ``RuntimeError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path

import numpy as np

from fslm_edge.errors import RuntimeFailure
from fslm_edge.fileio import AtomicFile, no_space, out_of_space, space_errors_named


class _State(Enum):
    COLLECTING = "collecting"
    COMMITTED = "committed"
    ABORTED = "aborted"


class GGUFOut:
    def __init__(self, path: str | os.PathLike, arch: str):
        import gguf

        self.path = Path(path)
        self.arch = arch
        self._file = AtomicFile(self.path)
        self._tmp = self._file.tmp
        self.writer = gguf.GGUFWriter(str(self._tmp), arch)
        self._state = _State.COLLECTING
        self._names: set[str] = set()

    def _require(self, state: _State, action: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"cannot {action}: the GGUF writer for {self.path} is {self._state.value}")

    def add_tensor(self, name: str, array: np.ndarray, raw_dtype=None, raw_shape=None) -> None:
        self._require(_State.COLLECTING, f"add tensor {name}")
        if name in self._names:
            raise RuntimeError(f"duplicate tensor {name} for {self.path}")
        self._names.add(name)
        if raw_dtype is None:
            self.writer.add_tensor(name, np.ascontiguousarray(array))
        else:
            self.writer.add_tensor(name, array, raw_shape=raw_shape, raw_dtype=raw_dtype)

    def add_kv(self, method: str, *args) -> None:
        """Call ``GGUFWriter.<method>(*args)``, e.g. add_kv("add_name", "x")."""
        self._require(_State.COLLECTING, f"add metadata ({method})")
        getattr(self.writer, method)(*args)

    def commit(self, before_commit: Callable[[Path], None] | None = None) -> Path:
        self._require(_State.COLLECTING, "commit")
        try:
            with space_errors_named(self.path, self._tmp):
                self.writer.write_header_to_file()
                self.writer.write_kv_data_to_file()
                self.writer.write_tensors_to_file()
                self.writer.flush()
                expected = self.writer.fout[0].tell()
                self.writer.close()
                self._check_size(expected)
            self._file.commit(before_commit)
        except BaseException:
            self.abort()
            raise
        self._state = _State.COMMITTED
        return self.path

    def _check_size(self, expected: int) -> None:
        """numpy writes tensors through a C stdio copy of the file whose
        failed final flush goes unreported: a short file is caught here."""
        size = os.path.getsize(self._tmp)
        if size < expected:
            if out_of_space(self._tmp):
                raise no_space(self.path)
            raise RuntimeFailure(f"writing {self.path} stopped after {size} of {expected} bytes; run again")

    def abort(self) -> None:
        if self._state is _State.COMMITTED:
            return
        self._state = _State.ABORTED
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - best effort while already failing
            pass
        self._file.discard()

    def __enter__(self) -> GGUFOut:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._state is _State.COLLECTING:
            self.abort()


def write_lora_gguf(path: str | os.PathLike, arch: str, alpha: float,
                    tensors: Mapping[str, tuple[np.ndarray, np.ndarray]], name: str = "lora",
                    dtype=np.float32, before_commit: Callable[[Path], None] | None = None) -> Path:
    """Write a llama.cpp LoRA adapter.

    ``tensors`` maps a base tensor name (``blk.0.attn_q.weight``) to ``(A, B)``
    in PEFT's layout: A is ``(r, n_in)``, B is ``(n_out, r)``, already in the
    base GGUF's row order (llama q/k permutation applied by the caller).
    """
    with GGUFOut(path, arch) as out:
        out.add_kv("add_type", "adapter")
        out.add_kv("add_string", "adapter.type", "lora")
        out.add_kv("add_float32", "adapter.lora.alpha", float(alpha))
        out.add_kv("add_name", name)
        for base_name, (a, b) in tensors.items():
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"{base_name}: A {a.shape} and B {b.shape} do not share a rank")
            out.add_tensor(f"{base_name}.lora_a", a.astype(dtype))
            out.add_tensor(f"{base_name}.lora_b", b.astype(dtype))
        return out.commit(before_commit)


def write_random_lora(path: str | os.PathLike, *, arch: str = "llama", n_layers: int = 30, n_in: int = 576,
                      n_q: int = 576, n_kv: int = 192, rank: int = 4, alpha: float = 8.0, scale: float = 0.05,
                      seed: int = 0) -> Path:
    """A random LoRA over q/v projections (SmolLM2-135M shapes by default),
    for tests and benchmarks of the runtime's adapter handling."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(n_layers):
        for name, n_out in (("attn_q", n_q), ("attn_v", n_kv)):
            a = rng.normal(0, scale, (rank, n_in)).astype(np.float32)
            b = rng.normal(0, scale, (n_out, rank)).astype(np.float32)
            tensors[f"blk.{layer}.{name}.weight"] = (a, b)
    return write_lora_gguf(path, arch, alpha, tensors, name=Path(path).stem)
