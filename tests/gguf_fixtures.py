"""Raw GGUF writing for the hostile-input tests and scripts/fuzz.py: any field,
count or offset, valid or not, and a tiny llama model (SmolLM2's tokenizer,
2 blocks of width 64) that llama.cpp loads in a fraction of a second."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fslm_edge.ggufread import _SCALARS, ARRAY, STRING, GGUFFile

UINT32, INT32, FLOAT32, UINT64 = 4, 5, 6, 10
F32, F16 = 0, 1  # ggml tensor types


@dataclass
class KV:
    key: str
    vtype: int
    value: object
    sub: int | None = None  # item type of an array


@dataclass
class RawTensor:
    name: str
    shape: tuple[int, ...]  # ggml order
    ttype: int
    data: bytes


def _string(text: str | bytes) -> bytes:
    raw = text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else text  # lone surrogates: bad UTF-8
    return struct.pack("<Q", len(raw)) + raw


def encode_value(vtype: int, value, sub: int | None = None) -> bytes:
    if vtype == STRING:
        return _string(value)
    if isinstance(value, bytes) and vtype != STRING:
        return value  # already encoded (for an array: item type, count, items)
    if vtype == ARRAY:
        items = list(value)
        head = struct.pack("<IQ", sub, len(items))
        if sub == STRING:
            return head + b"".join(_string(v) for v in items)
        if sub == ARRAY:  # nested arrays: items are (sub, values) pairs
            return head + b"".join(encode_value(ARRAY, v, s) for s, v in items)
        return head + b"".join(struct.pack(_SCALARS[sub], v) for v in items)
    return struct.pack(_SCALARS[vtype], value)


def gguf_bytes(kvs: list[KV], tensors: list[RawTensor], alignment: int = 32, version: int = 3,
               n_tensors: int | None = None, n_kv: int | None = None, offsets: list[int] | None = None) -> bytes:
    """A GGUF file's bytes; the counts and offsets can be given to lie."""
    out = [b"GGUF", struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                   len(kvs) if n_kv is None else n_kv)]
    for kv in kvs:
        out.append(_string(kv.key) + struct.pack("<I", kv.vtype) + encode_value(kv.vtype, kv.value, kv.sub))
    position, auto_offsets = 0, []
    for tensor in tensors:
        auto_offsets.append(position)
        position += (len(tensor.data) + alignment - 1) // alignment * alignment
    for tensor, offset in zip(tensors, offsets or auto_offsets):
        out.append(_string(tensor.name) + struct.pack("<I", len(tensor.shape))
                   + b"".join(struct.pack("<Q", d) for d in tensor.shape) + struct.pack("<IQ", tensor.ttype, offset))
    header = b"".join(out)
    pad = max(alignment, 1)
    body = [header + b"\0" * (-len(header) % pad)]
    for tensor in tensors:
        body.append(tensor.data + b"\0" * (-len(tensor.data) % pad))
    return b"".join(body)


def read_kvs(path: Path) -> list[KV]:
    """Every metadata field of a GGUF file, in order, as KV."""
    reader = GGUFFile(path)
    return [KV(key, f.vtype, f.value.tolist() if isinstance(f.value, np.ndarray) else f.value, f.sub_type)
            for key, f in reader.fields.items()]


def read_tensors(path: Path) -> list[RawTensor]:
    reader = GGUFFile(path)
    return [RawTensor(t.name, t.shape, int(t.tensor_type), bytes(reader._map[t.offset : t.offset + t.n_bytes]))
            for t in reader.tensors]


def set_kv(kvs: list[KV], key: str, vtype: int | None, value=None, sub: int | None = None) -> list[KV]:
    """``kvs`` with ``key`` replaced (or appended; vtype None removes it)."""
    out = [kv for kv in kvs if kv.key != key]
    if vtype is not None:
        index = next((i for i, kv in enumerate(kvs) if kv.key == key), len(out))
        out.insert(index, KV(key, vtype, value, sub))
    return out


def tiny_llama_parts(base: Path, seed: int = 0, n_layers: int = 2) -> tuple[list[KV], list[RawTensor]]:
    """A random llama of width 64 with ``base``'s tokenizer (its tokenizer.* fields)."""
    rng = np.random.default_rng(seed)
    kvs = [KV("general.architecture", STRING, "llama"), KV("general.type", STRING, "model"),
           KV("general.name", STRING, "tiny-hostile"), KV("general.file_type", UINT32, 1),
           KV("llama.context_length", UINT32, 512), KV("llama.embedding_length", UINT32, 64),
           KV("llama.block_count", UINT32, n_layers), KV("llama.feed_forward_length", UINT32, 128),
           KV("llama.attention.head_count", UINT32, 4), KV("llama.attention.head_count_kv", UINT32, 2),
           KV("llama.attention.layer_norm_rms_epsilon", FLOAT32, 1e-5), KV("llama.rope.freq_base", FLOAT32, 1e4),
           KV("llama.rope.dimension_count", UINT32, 16), KV("llama.vocab_size", UINT32, 49152)]
    kvs += [kv for kv in read_kvs(base) if kv.key.startswith("tokenizer.")]

    def tensor(name: str, *shape: int, ttype: int = F32, scale: float = 0.08) -> RawTensor:
        values = rng.standard_normal(tuple(reversed(shape))) * scale
        if name.endswith("norm.weight"):
            values = values + 1.0
        dtype = np.float16 if ttype == F16 else np.float32
        return RawTensor(name, shape, ttype, values.astype(dtype).tobytes())

    tensors = [tensor("token_embd.weight", 64, 49152, ttype=F16), tensor("output_norm.weight", 64)]
    for i in range(n_layers):
        tensors += [tensor(f"blk.{i}.attn_norm.weight", 64), tensor(f"blk.{i}.attn_q.weight", 64, 64),
                    tensor(f"blk.{i}.attn_k.weight", 64, 32), tensor(f"blk.{i}.attn_v.weight", 64, 32),
                    tensor(f"blk.{i}.attn_output.weight", 64, 64), tensor(f"blk.{i}.ffn_norm.weight", 64),
                    tensor(f"blk.{i}.ffn_gate.weight", 64, 128), tensor(f"blk.{i}.ffn_up.weight", 64, 128),
                    tensor(f"blk.{i}.ffn_down.weight", 128, 64)]
    return kvs, tensors


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
