"""The process-wide side of llama.cpp: loading, logs, the build's backend.

llama.cpp logs through a callback; fslm-edge installs one that drops the logs
(or keeps them on stderr with ``FSLM_EDGE_VERBOSE=1``), so nothing redirects
file descriptors at run time. llama-cpp-python still silences fd 1 and 2 with
dup2 while it builds a model or context; that is not thread-safe, so every
load, context and adapter creation runs under one lock (``native_lock``).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import llama_cpp

native_lock = threading.RLock()  # model, context and adapter creation; fd juggling in llama-cpp-python
_log_lines: list[str] | None = None  # while capturing: what llama.cpp logs (for grammar errors)


@llama_cpp.llama_log_callback
def _log_callback(level, text, _user_data):
    message = text.decode("utf-8", errors="replace") if text else ""
    if _log_lines is not None:
        _log_lines.append(message)
    if os.environ.get("FSLM_EDGE_VERBOSE"):
        sys.stderr.write(message)


def _install_log_callback() -> None:
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


_install_log_callback()


@contextmanager
def captured_logs():
    """What llama.cpp logs inside the block, as a list of lines (under the
    native lock: one capture at a time)."""
    global _log_lines
    with native_lock:
        lines: list[str] = []
        _log_lines = lines
        try:
            yield lines
        finally:
            _log_lines = None


@contextmanager
def captured_stderr():
    """What native code writes to fd 2 inside the block (llama.cpp's grammar
    parser prints its errors there), as a list that holds one string after the
    block; under the native lock, so no other thread's output is caught."""
    import tempfile

    with native_lock:
        captured: list[str] = []
        sys.stderr.flush()
        with tempfile.TemporaryFile() as sink:
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                captured.append(sink.read(1 << 16).decode("utf-8", errors="replace"))


@contextmanager
def quiet_stderr():
    """Kept for callers outside the engine that load llama.cpp objects: holds
    the native lock (llama.cpp logs already go through the callback)."""
    with native_lock:
        yield


def amx_in_build() -> bool:
    """Whether this llama.cpp build has ggml's AMX matmul kernels (a -march=native
    build on a CPU that reports AMX)."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def open_llama(model_path: str, **kwargs) -> llama_cpp.Llama:
    """``llama_cpp.Llama(model_path, **kwargs)`` under the native lock, kept off
    ggml's AMX kernels.

    ggml's AMX matmul dies of SIGILL (``tilezero`` in a worker thread: its tile
    configuration is lost; llama.cpp PR 26954) on Sapphire Rapids machines seen
    here, so where the build has them, the model is loaded without llama.cpp's
    "extra" weight buffers (AMX, and the CPU repacking that comes with them) and
    runs on the plain CPU kernels. ``FSLM_EDGE_AMX=1`` keeps them. Llama reads its
    model parameters from ``llama_model_default_params``, so that function is
    swapped for the load, under the lock, and restored."""
    with native_lock:
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))  # Llama() may install its own
        if os.environ.get("FSLM_EDGE_AMX") == "1" or not amx_in_build():
            return _construct(model_path, kwargs)
        module = llama_cpp.llama_cpp
        defaults = module.llama_model_default_params

        def without_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        module.llama_model_default_params = without_extra_buffers
        try:
            return _construct(model_path, kwargs)
        finally:
            module.llama_model_default_params = defaults


def _construct(model_path: str, kwargs: dict) -> llama_cpp.Llama:
    llm = llama_cpp.Llama(model_path=model_path, **kwargs)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llm


@dataclass(frozen=True)
class Backend:
    """What this llama.cpp build computes on."""

    name: str  # "CPU", "CUDA", "Metal", "Vulkan", ... (every device type compiled in)
    gpu_offload: bool  # whether layers can be offloaded to a GPU
    devices: tuple[str, ...]
    system_info: str


def backend_info() -> Backend:
    """The build's backends and devices, read from ggml's registry."""
    devices = []
    lib = llama_cpp.llama_cpp
    count_fn = getattr(lib, "ggml_backend_dev_count", None)
    if count_fn is not None:
        try:
            for index in range(count_fn()):
                device = lib.ggml_backend_dev_get(index)
                name = lib.ggml_backend_dev_name(device)
                devices.append(name.decode() if name else f"device {index}")
        except (AttributeError, OSError):
            devices = []
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    kinds = [kind for kind in ("CUDA", "Metal", "Vulkan", "SYCL", "HIP", "OpenCL", "CANN", "MUSA")
             if any(kind.lower() in d.lower() for d in devices) or f"{kind.upper()} = 1" in info]
    name = ", ".join(["CPU", *kinds]) if kinds else "CPU"
    return Backend(name, offload, tuple(devices), info.strip())
