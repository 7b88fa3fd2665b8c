"""A fast, bounded GGUF reader (runtime and build tools).

``gguf.GGUFReader`` builds a numpy view per array element, which takes
seconds on a 50k-262k token vocabulary. This reader parses the header with
``struct`` (string arrays in a plain loop, numeric arrays with one
``frombuffer``) and memory-maps tensor data, so opening any base is instant.

Every file is hostile: each count and length is checked against the bytes
left in the file before anything is allocated, and whatever is malformed
(also what llama.cpp's own reader refuses: arrays of arrays, an alignment that
is not a power of two, more than 4 dimensions, unknown tensor types, tensor
data outside the file) is a ModelError naming the file and the fault.
``summary=True`` keeps only the start of long strings and skips keeping huge
arrays, for callers that need the model's shape, not its vocabulary text.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fslm_edge.errors import ModelError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9
UINT32 = 4

SUPPORTED_VERSIONS = (2, 3)  # llama.cpp reads no other
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1
TENSOR_ALIGNMENT = 32  # ggml aborts on memory-mapped tensor data not aligned to this
MAX_STRING_ITEMS = 1 << 24  # strings in one array; the largest vocabularies have ~262k tokens
SUMMARY_STRING_CHARS = 64 * 1024  # what summary=True keeps of a long string (a 50 MB description stays fast)
SUMMARY_ARRAY_ITEMS = 1 << 20  # longer arrays are walked but not kept with summary=True
_U64 = struct.Struct("<Q")


class MalformedGGUF(ValueError):
    """What is wrong with a file's bytes (GGUFFile adds the file name)."""


@dataclass(frozen=True)
class Field:
    vtype: int
    sub_type: int | None
    value: object  # python scalar, str, list (string arrays), numpy array, or None (array not kept)
    count: int = 1  # items in an array, bytes in a string
    truncated: bool = False  # a string or array summary=True did not keep whole


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    tensor_type: object  # gguf.GGMLQuantizationType
    offset: int
    n_bytes: int


class _Cursor:
    def __init__(self, buf: memoryview, summary: bool):
        self.buf, self.pos, self.summary = buf, 0, summary

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left:
            raise MalformedGGUF(f"{what} needs {n} bytes at offset {self.pos} but the file has {self.left} left")

    def unpack(self, fmt: str, what: str = "a value"):
        size = struct.calcsize(fmt)
        self.need(size, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self, what: str) -> str:
        return self.string_start(what, None)[0]

    def string_start(self, what: str, keep: int | None) -> tuple[str, bool, int]:
        """(text, whether it was cut to ``keep`` characters, its length in bytes)."""
        n = self.unpack("<Q", what)
        self.need(n, f"{what} ({n} bytes long)")
        end = self.pos + n if keep is None else self.pos + min(n, keep * 4)  # utf-8: at most 4 bytes a char
        text = bytes(self.buf[self.pos : end]).decode("utf-8", errors="replace")
        self.pos += n
        if keep is None or (len(text) <= keep and end == self.pos):
            return text, False, n
        return text[:keep], True, n

    def strings(self, count: int, what: str) -> list[str]:
        """``count`` strings in one tight loop (a vocabulary has up to ~262k)."""
        buf, pos, end, items = self.buf, self.pos, len(self.buf), []
        unpack, append = _U64.unpack_from, items.append
        for _ in range(count):
            if pos + 8 > end:
                raise MalformedGGUF(f"{what} run past the end of the file")
            n = unpack(buf, pos)[0]
            pos += 8
            if pos + n > end:
                raise MalformedGGUF(f"{what} run past the end of the file")
            append(str(buf[pos : pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return items

    def skip_strings(self, count: int, what: str) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        for _ in range(count):
            if pos + 8 > end:
                raise MalformedGGUF(f"{what} run past the end of the file")
            pos += 8 + _U64.unpack_from(buf, pos)[0]
        if pos > end:
            raise MalformedGGUF(f"{what} run past the end of the file")
        self.pos = pos

    def field(self, key: str) -> Field:
        vtype = self.unpack("<I", f"the type of '{key}'")
        if vtype == STRING:
            keep = SUMMARY_STRING_CHARS if self.summary else None
            text, truncated, n_bytes = self.string_start(f"the string '{key}'", keep)
            return Field(vtype, None, text, n_bytes, truncated)
        if vtype == ARRAY:
            return self.array(key)
        if vtype not in _SCALARS:
            raise MalformedGGUF(f"key '{key}' has unknown value type {vtype}")
        return Field(vtype, None, self.unpack(_SCALARS[vtype], f"the value of '{key}'"))

    def array(self, key: str) -> Field:
        sub, count = self.unpack("<I", f"the item type of '{key}'"), self.unpack("<Q", f"the length of '{key}'")
        if sub == ARRAY:
            raise MalformedGGUF(f"key '{key}' is an array of arrays, which llama.cpp cannot read")
        if sub == STRING:
            if count > MAX_STRING_ITEMS or count * 8 > self.left:
                raise MalformedGGUF(f"key '{key}' claims {count} strings, more than the file can hold")
            if self.summary and count > SUMMARY_ARRAY_ITEMS:
                self.skip_strings(count, f"the strings of '{key}'")
                return Field(ARRAY, sub, None, count, truncated=True)
            return Field(ARRAY, sub, self.strings(count, f"the strings of '{key}'"), count)
        if sub not in _NUMPY:
            raise MalformedGGUF(f"key '{key}' is an array of unknown type {sub}")
        dtype = np.dtype(_NUMPY[sub]).newbyteorder("<")
        n_bytes = count * dtype.itemsize
        self.need(n_bytes, f"the {count} items of '{key}'")
        if self.summary and count > SUMMARY_ARRAY_ITEMS:
            self.pos += n_bytes
            return Field(ARRAY, sub, None, count, truncated=True)
        array = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += n_bytes
        return Field(ARRAY, sub, array, count)


class GGUFFile:
    """Metadata fields and tensors of a GGUF file (tensor data memory-mapped)."""

    def __init__(self, path: str | Path, summary: bool = False):
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (ValueError, OSError) as exc:  # numpy refuses to map an empty file
            raise ModelError(f"cannot read {self.path} as a GGUF file ({exc})") from None
        try:
            self._parse(_Cursor(memoryview(self._map), summary))
        except (MalformedGGUF, struct.error, OverflowError, MemoryError) as exc:
            raise ModelError(f"{self.path} is not a valid GGUF file: {exc}; it may be truncated or corrupt, "
                             "or not made by a GGUF writer") from None

    def _parse(self, cur: _Cursor) -> None:
        if bytes(self._map[:4]) != b"GGUF":
            raise MalformedGGUF("wrong magic bytes (not GGUF)")
        cur.pos = 4
        self.version = cur.unpack("<I", "the version")
        if self.version not in SUPPORTED_VERSIONS:
            raise MalformedGGUF(f"GGUF version {self.version} (llama.cpp reads versions 2 and 3)")
        n_tensors, n_kv = cur.unpack("<Q", "the tensor count"), cur.unpack("<Q", "the key count")
        # bounds before any loop: a key takes >= 13 bytes, a tensor description >= 24
        if n_kv * 13 > cur.left:
            raise MalformedGGUF(f"the header claims {n_kv} keys, more than the file can hold")
        if n_tensors * 24 > cur.left:
            raise MalformedGGUF(f"the header claims {n_tensors} tensors, more than the file can hold")
        self.fields: dict[str, Field] = {}
        for index in range(n_kv):
            key = cur.string(f"key {index}")
            if not key:
                raise MalformedGGUF(f"key {index} is empty")
            if key in self.fields:
                raise MalformedGGUF(f"duplicate key '{key}'")
            self.fields[key] = cur.field(key)
        align = self._alignment()
        infos = [self._tensor_info(cur, index) for index in range(n_tensors)]
        start = (cur.pos + align - 1) // align * align
        self.data_start = start
        self.tensors: list[Tensor] = []
        names: set[str] = set()
        for name, dims, ttype, offset in infos:
            if name in names:
                raise MalformedGGUF(f"duplicate tensor name '{name}'")
            names.add(name)
            self.tensors.append(self._tensor(name, dims, ttype, offset, start, align))

    def _alignment(self) -> int:
        fld = self.fields.get("general.alignment")
        if fld is None:
            return 32
        if fld.vtype != UINT32:
            raise MalformedGGUF("general.alignment must be a uint32")
        align = int(fld.value)
        if align <= 0 or align & (align - 1):
            raise MalformedGGUF(f"general.alignment is {align}, not a power of two")
        return align

    @staticmethod
    def _tensor_info(cur: _Cursor, index: int) -> tuple:
        name = cur.string(f"the name of tensor {index}")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise MalformedGGUF(f"tensor {index}'s name is longer than {MAX_NAME_BYTES} bytes")
        n_dims = cur.unpack("<I", f"the dimension count of '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise MalformedGGUF(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        dims = tuple(cur.unpack("<Q", f"the shape of '{name}'") for _ in range(n_dims))
        return name, dims, cur.unpack("<I", f"the type of '{name}'"), cur.unpack("<Q", f"the offset of '{name}'")

    def _tensor(self, name: str, dims: tuple, ttype: int, offset: int, start: int, align: int) -> Tensor:
        import gguf

        try:
            qtype = gguf.GGMLQuantizationType(ttype)
            block, size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise MalformedGGUF(f"tensor '{name}' has unknown type {ttype}") from None
        if any(d == 0 for d in dims) or dims[0] % block:
            raise MalformedGGUF(f"tensor '{name}' has shape {list(dims)}, which a {qtype.name} tensor cannot have "
                                f"(dimensions >= 1, rows a multiple of {block})")
        n_bytes = int(np.prod(dims, dtype=object)) // block * size
        if offset % align:
            raise MalformedGGUF(f"tensor '{name}' starts at offset {offset}, not a multiple of the alignment {align}")
        if (start + offset) % TENSOR_ALIGNMENT:
            raise MalformedGGUF(f"tensor '{name}' starts at byte {start + offset} of the file, not a multiple of "
                                f"{TENSOR_ALIGNMENT} (general.alignment is {align}); llama.cpp needs aligned data")
        if start + offset + n_bytes > len(self._map):
            raise MalformedGGUF(f"tensor '{name}' ({n_bytes} bytes at {start + offset}) ends past the end of the "
                                f"file ({len(self._map)} bytes)")
        return Tensor(name, dims, qtype, start + offset, n_bytes)

    def get(self, key: str, default=None):
        fld = self.fields.get(key)
        return default if fld is None else fld.value

    def raw(self, tensor: Tensor) -> np.ndarray:
        """The stored bytes, shaped as ``gguf.quants.dequantize`` expects."""
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
        data = self._map[tensor.offset : tensor.offset + tensor.n_bytes]
        rows = tuple(reversed(tensor.shape[1:]))
        return data.reshape(*rows, tensor.shape[0] // block * size)

    def dequantize(self, tensor: Tensor) -> np.ndarray:
        """float32 array in numpy order (``reversed(tensor.shape)``)."""
        import gguf

        data = gguf.quants.dequantize(self.raw(tensor), tensor.tensor_type)
        return np.asarray(data, dtype=np.float32).reshape(tuple(reversed(tensor.shape)))
