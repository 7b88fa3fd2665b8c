"""Writing and reading files safely: the one place for atomic writes, JSONL
reading, the append-only record log, file hashes and cache fingerprints.

Atomic writes go to a hidden temp file beside the target,
``.NAME.<pid>.<random>.tmp``, which is fsync'd and renamed over the target;
an exception or Ctrl-C removes it. A process killed with SIGKILL cannot clean
up, so every write first removes the temp files of the same target whose
writing process is gone (the pid in the name; a temp of a live writer is
left alone). A full disk (ENOSPC, EDQUOT, or EFBIG past a file-size limit)
becomes :class:`RuntimeFailure` naming the file.

Standard library only (the runtime core imports this).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError, FslmError, InputError, RuntimeFailure

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_PROBE_BYTES = 1 << 20


# -- output paths ---------------------------------------------------------------

def output_file(value: str | os.PathLike, option: str = "--out") -> Path:
    """``value`` as the path of a file to write; InputError if it cannot be one."""
    path = Path(value)
    if str(value).strip() == "":
        raise InputError(f"{option} is empty; give a file path")
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {path}: {parent} is a file, not a folder; give another path")
            break
    return path


def output_folder(value: str | os.PathLike, option: str = "--out") -> Path:
    """``value`` as a folder to write into; InputError if it is a file."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; give a folder path")
    return path


# -- disk full ------------------------------------------------------------------

_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust (safetensors) reports an errno


def is_space_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in SPACE_ERRNOS
    found = _OS_ERROR_IN_TEXT.search(str(exc))
    return bool(found) and int(found.group(1)) in SPACE_ERRNOS


def no_space(path: str | os.PathLike) -> RuntimeFailure:
    return RuntimeFailure(f"no space left on device writing {path}; free some space and run again")


def out_of_space(tmp: str | os.PathLike) -> bool:
    """Whether a failed write into ``tmp`` failed for lack of space.

    Writers such as torch, safetensors or llama.cpp report a failed write in
    their own words (a RuntimeError, a status code), so ask the file system:
    growing the half-written file by 1 MiB fails the same way if space (or
    the file-size limit) is what ran out."""
    try:
        with open(tmp, "ab") as handle:
            handle.write(b"\0" * _PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc.errno in SPACE_ERRNOS
    return False


def folder_out_of_space(folder: str | os.PathLike) -> bool:
    """:func:`out_of_space` for a writer that removed its half-written file:
    a new 1 MiB file in ``folder`` fails the same way if space ran out."""
    probe = Path(folder) / f".probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        return out_of_space(probe)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


@contextmanager
def space_errors_named(path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a full disk while writing ``path`` (through ``tmp``) into RuntimeFailure."""
    try:
        yield
    except FslmError:
        raise
    except Exception as exc:
        if is_space_error(exc):
            raise no_space(path) from None
        if isinstance(exc, OSError) or tmp is None:
            raise
        if os.path.isfile(tmp) and out_of_space(tmp) or not os.path.exists(tmp) and folder_out_of_space(
                Path(path).parent):
            raise no_space(path) from None
        raise


# -- temp files -----------------------------------------------------------------

def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _temp_pattern(target: Path) -> re.Pattern:
    # ours: .NAME.<pid>.<8 hex>.tmp; older writers (mkstemp): .NAME.<8 of [a-z0-9_]>.tmp
    return re.compile(rf"\.{re.escape(target.name)}\.(?:(\d+)\.[0-9a-f]{{8}}|[a-z0-9_]{{8}})\.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another write of this process (a thread) is under way
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def stale_temp_files(target: str | os.PathLike) -> list[Path]:
    """Temp files (or folders) of ``target`` left by writers that were killed.
    Temp names without a pid (older writers) count as abandoned."""
    target = Path(target)
    pattern = _temp_pattern(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    stale = []
    for name in names:
        match = pattern.fullmatch(name)
        if match and not (match.group(1) and _alive(int(match.group(1)))):
            stale.append(target.parent / name)
    return sorted(stale)


def remove_stale_temp_files(target: str | os.PathLike) -> int:
    removed = 0
    for stale in stale_temp_files(target):
        try:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # another run cleaned it first
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _ordinary_mode(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class AtomicFile:
    """A temp path beside ``target`` that :meth:`commit` renames into place.

    For writers that want a file name rather than a handle (GGUF writers,
    torch.save, llama.cpp's quantizer). ``before_commit(tmp)`` runs on the
    complete, fsync'd temp file before the rename (a manifest is written
    there, so an artifact never appears without its manifest)."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.target)
        self.tmp = _temp_name(self.target)
        self.done = False

    def commit(self, before_commit: Callable[[Path], None] | None = None) -> Path:
        with space_errors_named(self.target, self.tmp):
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            _ordinary_mode(self.tmp)
        if before_commit is not None:
            before_commit(self.tmp)
        os.replace(self.tmp, self.target)
        self.done = True
        _fsync_dir(self.target.parent)
        return self.target

    def discard(self) -> None:
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def atomic_path(target: str | os.PathLike, before_commit: Callable[[Path], None] | None = None
                ) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``: ``p`` appears complete, or not at all."""
    out = AtomicFile(target)
    try:
        with space_errors_named(out.target, out.tmp):
            yield out.tmp
        out.commit(before_commit)
    finally:
        if not out.done:
            out.discard()


@contextmanager
def atomic_output(target: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                  before_commit: Callable[[Path], None] | None = None) -> Iterator:
    """``with atomic_output(p, "w") as handle: ...``: a handle on the temp file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output writes a whole file: mode 'w' or 'wb', not {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(target, before_commit) as tmp:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()


def atomic_write(target: str | os.PathLike, data_or_writer: bytes | str | Callable,
                 before_commit: Callable[[Path], None] | None = None) -> Path:
    """Write ``bytes``, ``str`` (UTF-8) or ``writer(handle)`` (binary) to ``target`` atomically."""
    with atomic_output(target, "wb", before_commit=before_commit) as handle:
        if isinstance(data_or_writer, str):
            handle.write(data_or_writer.encode("utf-8"))
        elif isinstance(data_or_writer, (bytes, bytearray, memoryview)):
            handle.write(data_or_writer)
        else:
            data_or_writer(handle)
    return Path(target)


def write_json(target: str | os.PathLike, payload, before_commit: Callable[[Path], None] | None = None,
               indent: int = 2) -> Path:
    text = json.dumps(payload, indent=indent, ensure_ascii=False, default=str) + "\n"
    return atomic_write(target, text, before_commit)


@contextmanager
def atomic_folder(target: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """A temp folder beside ``target``, renamed into place on success; removed
    on failure. An older ``target`` is replaced, or with ``keep_existing``
    (a cache another process may have filled meanwhile) kept."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    tmp = _temp_name(target)
    tmp.mkdir()
    try:
        try:
            yield tmp
        except FslmError:
            raise
        except Exception as exc:
            if is_space_error(exc) or _folder_out_of_space(tmp):
                raise no_space(target) from None
            raise
        if target.exists() and keep_existing:
            return
        if target.exists():
            old = _temp_name(target)
            os.replace(target, old)  # a folder cannot be renamed over a non-empty one
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _folder_out_of_space(folder: Path) -> bool:
    """:func:`out_of_space` on the largest file of a half-written folder (or a new one)."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    if not files:
        return folder_out_of_space(folder)
    return out_of_space(max(files, key=lambda p: p.stat().st_size))


# -- hashes ---------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: str) -> str:
    """A cache key over text parts (SHA-1 of the parts joined by newlines:
    a name for cached results, not a security checksum)."""
    digest = hashlib.sha1()
    for index, part in enumerate(parts):
        digest.update((f"\n{part}" if index else part).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


# -- JSON from outside ----------------------------------------------------------

MAX_JSON_DEPTH = 64


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; write a number or a string")


def _check_json_value(value) -> None:
    """Refuse what json.loads lets through but nothing downstream can use:
    deep nesting, lone surrogates (not encodable as UTF-8)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff), not text") from None
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("a number is too large to be finite")


def parse_json_text(text: str | bytes):
    """One JSON document from outside; ValueError (one line) if it is not usable."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    _check_json_value(value)
    return value


@dataclass(frozen=True)
class BadLine:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def _open_lines(path: Path):
    if path.name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


MAX_LINE_BYTES = 64 << 20


def _require_regular_file(path: Path) -> None:
    """A FIFO would block the reader forever and a device never ends."""
    try:
        info = path.stat()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise DatasetError(f"{path} is a folder; give a .jsonl file")
    if not stat.S_ISREG(info.st_mode):
        raise DatasetError(f"{path} is not a regular file (a pipe or device); give a .jsonl file")


def _stream_errors() -> tuple[type[BaseException], ...]:
    import gzip
    import zlib

    return (OSError, EOFError, zlib.error, gzip.BadGzipFile)


def read_jsonl(path: str | os.PathLike, *, skip_bad: bool = False, bad: list | None = None,
               fix: str = "fix or delete the line, or use --skip-bad") -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of each JSON object line of a ``.jsonl`` or
    ``.jsonl.gz`` file. A bad line is a DatasetError ``FILE:LINE: what; fix``,
    or with ``skip_bad`` a :class:`BadLine` appended to ``bad``. An unreadable
    file (missing, corrupt gzip) is a DatasetError either way."""
    path = Path(path)
    _require_regular_file(path)
    try:
        handle = _open_lines(path)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    number = 0
    with handle:
        while True:
            try:
                raw = handle.readline(MAX_LINE_BYTES + 1)
                too_long = len(raw) > MAX_LINE_BYTES
                while raw and not raw.endswith(b"\n") and len(raw) > MAX_LINE_BYTES:
                    raw = handle.readline(MAX_LINE_BYTES + 1)  # the rest of an overlong line
            except _stream_errors() as exc:
                raise DatasetError(f"{path}:{number + 1}: the file is corrupt or cut short ({exc}); "
                                   "restore or recompress it") from None
            if not raw:
                return
            number += 1
            if not too_long and not raw.strip():
                continue
            try:
                if too_long:
                    raise ValueError(f"the line is longer than {MAX_LINE_BYTES >> 20} MiB")
                row = parse_json_text(raw)
                if not isinstance(row, dict):
                    raise ValueError(f"each line must be a JSON object, not {type(row).__name__}")
            except ValueError as exc:
                problem = BadLine(str(path), number, str(exc))
                if not skip_bad:
                    raise DatasetError(f"{problem}; {fix}") from None
                if bad is not None:
                    bad.append(problem)
                continue
            yield number, row


# -- the append-only record log -------------------------------------------------

def _lock(handle) -> None:
    try:
        import fcntl
    except ImportError:  # no advisory locks here: a single writer is assumed
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every complete JSON-object line of a record log (none if it does not
    exist). A torn last line, or any line that is not a JSON object (bytes
    that are not UTF-8 included), is skipped: the log is a cache, and an
    interrupted append must never stop the next run."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a record log; remove it") from None
    records = []
    for raw in data.split(b"\n"):
        record = _log_record(raw)
        if record is not None:
            records.append(record)
    return records


def _log_record(raw: bytes) -> dict | None:
    """One log line as a record, or None. A line cut short never parses as an
    object (what json.dumps writes ends with its only unnested ``}``), so a
    last line that does was complete and lost only its newline."""
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return record if isinstance(record, dict) else None


def _drop_torn_tail(handle) -> None:
    """Truncate an append handle's file to its last complete line, so the
    next record starts on a line of its own instead of gluing onto a torn one."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    end, block = size, 1 << 16
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            break
        end = start
    line_start = start + cut + 1 if end > 0 else 0
    handle.seek(line_start)
    if _log_record(handle.read(size - line_start)) is not None:
        handle.write(b"\n")  # a complete record that lost only its newline is kept
    else:
        handle.truncate(line_start)


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one line and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with space_errors_named(path):
        with open(path, "a+b") as handle:
            _lock(handle)
            _drop_torn_tail(handle)
            handle.seek(0, os.SEEK_END)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    for record in records:
        append_record(path, record)


def read_small_text(path: str | os.PathLike, limit: int) -> str:
    """A small UTF-8 text file (a stack file, grammar or schema) read whole.
    ValueError saying why not: not a regular file (opened non-blocking, so a
    FIFO cannot hang the reader; a device never ends), larger than ``limit``
    bytes, or not UTF-8. OSError for what the system refuses."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError("it is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file (a pipe, socket or device)")
        if info.st_size > limit:
            raise ValueError(f"it is larger than {limit} bytes")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"it is not UTF-8 text (byte {exc.start})") from None


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and delete a file in ``folder``: OSError if it cannot be written
    (a permission check alone is not enough: root ignores modes, a disk may be
    read-only or full)."""
    import tempfile

    fd, probe = tempfile.mkstemp(dir=folder, prefix=".fslm-edge-probe.")
    os.close(fd)
    os.unlink(probe)
