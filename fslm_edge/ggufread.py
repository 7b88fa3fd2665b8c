"""A fast GGUF reader (runtime and build tools).

``gguf.GGUFReader`` builds a numpy view per array element, which takes
seconds on a 50k-262k token vocabulary. This reader parses the header with
``struct`` (string arrays in a plain loop, numeric arrays with one
``frombuffer``) and memory-maps tensor data, so opening any base is instant.
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


@dataclass(frozen=True)
class Field:
    vtype: int
    sub_type: int | None
    value: object  # python scalar, str, list (string arrays) or numpy array


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    tensor_type: object  # gguf.GGMLQuantizationType
    offset: int
    n_bytes: int


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, vtype: int):
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            sub, count = self.unpack("<I"), self.unpack("<Q")
            if sub == STRING:
                return sub, [self.string() for _ in range(count)]
            if sub == ARRAY:
                return sub, [self.value(ARRAY) for _ in range(count)]
            dtype = np.dtype(_NUMPY[sub]).newbyteorder("<")
            array = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
            self.pos += count * dtype.itemsize
            return sub, array
        return self.unpack(_SCALARS[vtype])


class GGUFFile:
    """Metadata fields and tensors of a GGUF file (tensor data memory-mapped)."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            cur = _Cursor(memoryview(self._map))
            if bytes(self._map[:4]) != b"GGUF":
                raise ValueError("wrong magic bytes")
            cur.pos = 4
            self.version, n_tensors, n_kv = cur.unpack("<I"), cur.unpack("<Q"), cur.unpack("<Q")
            self.fields: dict[str, Field] = {}
            for _ in range(n_kv):
                key, vtype = cur.string(), cur.unpack("<I")
                value = cur.value(vtype)
                sub = None
                if vtype == ARRAY:
                    sub, value = value
                self.fields[key] = Field(vtype, sub, value)
            infos = []
            for _ in range(n_tensors):
                name, n_dims = cur.string(), cur.unpack("<I")
                dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
                infos.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
            align = int(self.get("general.alignment", 32))
            start = (cur.pos + align - 1) // align * align
            self.tensors: list[Tensor] = []
            for name, dims, ttype, offset in infos:
                qtype = gguf.GGMLQuantizationType(ttype)
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                n_bytes = int(np.prod(dims)) // block * size
                self.tensors.append(Tensor(name, dims, qtype, start + offset, n_bytes))
        except (ValueError, KeyError, struct.error, OSError, IndexError) as exc:
            raise ModelError(f"{self.path} is not a readable GGUF file ({type(exc).__name__}: {exc}); "
                             "it may be truncated or corrupt") from None
        if self.tensors and max(t.offset + t.n_bytes for t in self.tensors) > len(self._map):
            raise ModelError(f"{self.path} is truncated: its tensors end past the end of the file")

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
