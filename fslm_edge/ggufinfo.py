"""Read what a GGUF file is (architecture, quantization, tensor shapes) and
check LoRA adapters against their base before llama.cpp applies them."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import AdapterError, ModelError
from .ggufread import STRING
from .models import check_gguf_file


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]  # ggml order: ne[0] is the row length
    dtype: str
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    file_size: int
    kind: str  # "model" or "adapter"
    architecture: str
    name: str
    file_type: str
    n_params: int
    context_length: int | None
    n_layers: int | None
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    lora_alpha: float | None
    tensors: dict[str, TensorInfo] = field(repr=False, default_factory=dict)


MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: llama.cpp aborts on a block_count outside 1..512
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # llama.cpp aborts on any other
MAX_TRAIN_CONTEXT = 1 << 24  # llama-cpp-python allocates context_length tokens (int32) per tokenize call
_INT_TYPES = (0, 1, 2, 3, 4, 5, 10, 11)  # GGUF integer value types
_FLOAT_TYPES = (6, 12)
_BLOCK = re.compile(r"blk\.(\d+)\.")


class _Header:
    """Typed reads of a GGUF's metadata: a value of the wrong kind is a ModelError naming the key."""

    def __init__(self, reader, path: Path):
        self.reader, self.path = reader, path

    def bad(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self.path}: {key} {problem}; the file is corrupt or was written by a broken converter")

    def int(self, key: str, default=None, per_layer: bool = False) -> int | None:
        """An integer key; with ``per_layer`` also an integer array (one value per block: its largest)."""
        fld = self.reader.fields.get(key)
        if fld is None:
            return default
        if fld.vtype in _INT_TYPES:
            return int(fld.value)
        if per_layer and fld.sub_type in _INT_TYPES and fld.value is not None and len(fld.value):
            return int(np.max(fld.value))
        raise self.bad(key, "is not an integer")

    def float(self, key: str) -> float | None:
        fld = self.reader.fields.get(key)
        if fld is None:
            return None
        if fld.vtype in _INT_TYPES or fld.vtype in _FLOAT_TYPES:
            return float(fld.value)
        raise self.bad(key, "is not a number")

    def str(self, key: str, default: str | None = None) -> str | None:
        fld = self.reader.fields.get(key)
        if fld is None:
            return default
        if isinstance(fld.value, str):
            return fld.value
        raise self.bad(key, "is not a string")


def check_model_header(header: _Header, arch: str, tensors) -> None:
    """The header values llama.cpp asserts on (SIGABRT, no error to catch), checked first."""
    n_layers = header.int(f"{arch}.block_count")
    blocks = {int(m.group(1)) for t in tensors if (m := _BLOCK.match(t.name))}
    if n_layers is not None:
        if not 1 <= n_layers <= MAX_LAYERS:
            raise header.bad(f"{arch}.block_count", f"is {n_layers} (llama.cpp needs 1 to {MAX_LAYERS})")
        if blocks and n_layers != max(blocks) + 1:
            raise header.bad(f"{arch}.block_count", f"is {n_layers} but the file has tensors for "
                             f"{max(blocks) + 1} blocks (blk.0 to blk.{max(blocks)})")
        nextn = header.int(f"{arch}.nextn_predict_layers", 0)
        if not 0 <= nextn <= n_layers:
            raise header.bad(f"{arch}.nextn_predict_layers", f"is {nextn}, more than the {n_layers} blocks")
    for key in ("embedding_length", "context_length"):
        value = header.int(f"{arch}.{key}")
        if value is not None and value < 1:
            raise header.bad(f"{arch}.{key}", f"is {value}")
    trained = header.int(f"{arch}.context_length")
    if trained is not None and trained > MAX_TRAIN_CONTEXT:
        raise header.bad(f"{arch}.context_length", f"is {trained}, more than the {MAX_TRAIN_CONTEXT} tokens "
                         "fslm-edge accepts")
    _check_experts(header, arch)
    _check_floats(header, arch)
    rope = header.str(f"{arch}.rope.scaling.type")
    if rope is not None and rope not in ROPE_SCALING_TYPES:
        known = ", ".join(ROPE_SCALING_TYPES)
        raise header.bad(f"{arch}.rope.scaling.type", f"is '{rope[:40]}' (llama.cpp knows {known})")
    _check_vocabulary(header)
    _check_chat_templates(header)


def _check_chat_templates(header: _Header) -> None:
    """llama-cpp-python compiles every ``tokenizer.chat_template*`` whenever
    the model loads (even for chat = false): a huge one takes gigabytes, a
    broken one an uncaught exception, so they are refused here."""
    from .chat_template import MAX_SOURCE_CHARS, compile_problem

    for key, fld in header.reader.fields.items():
        if not key.startswith("tokenizer.chat_template"):
            continue
        if not isinstance(fld.value, str):
            raise header.bad(key, "is not a string")
        size = fld.count if fld.truncated else len(fld.value)
        problem = (f"is {size} bytes long, more than the {MAX_SOURCE_CHARS} fslm-edge accepts" if fld.truncated
                   else compile_problem(fld.value))
        if problem:
            raise ModelError(f"{header.path}: its chat template ({key}) {problem}; llama-cpp-python compiles it "
                             f"whenever the model loads, so fix or remove {key} in the GGUF")


def check_adapter_header(header: _Header) -> None:
    """llama.cpp reads these adapter keys asserting their types (SIGABRT on any other)."""
    adapter_type = header.str("adapter.type")
    if adapter_type != "lora":
        raise header.bad("adapter.type", f"is {adapter_type!r}, not 'lora'")
    fld = header.reader.fields.get("adapter.lora.alpha")
    if fld is not None and fld.vtype != 6:
        raise header.bad("adapter.lora.alpha", "is not a float32")


def _check_floats(header: _Header, arch: str) -> None:
    """Float hyperparameters must be finite, epsilons >= 0 (ggml asserts ``eps >= 0`` mid-generation)."""
    for key, fld in header.reader.fields.items():
        if not key.startswith(f"{arch}.") or fld.vtype not in _FLOAT_TYPES:
            continue
        value = float(fld.value)
        if not math.isfinite(value) or (key.endswith("epsilon") and value < 0):
            raise header.bad(key, f"is {value:g}, not a usable value")


def _check_experts(header: _Header, arch: str) -> None:
    n_expert = header.int(f"{arch}.expert_count", 0)
    used = header.int(f"{arch}.expert_used_count", 0, per_layer=True)
    groups = header.int(f"{arch}.expert_group_count", 0)
    group_used = header.int(f"{arch}.expert_group_used_count", 0)
    if n_expert == 0:
        ok = used == 0 and groups == 0
    else:
        ok = 0 < n_expert <= MAX_EXPERTS and 0 < used <= n_expert and 0 <= groups < n_expert and (
            groups <= 1 or (n_expert % groups == 0 and 0 < group_used < groups))
    if not ok:
        raise header.bad(f"{arch}.expert_count", f"({n_expert}) does not agree with expert_used_count ({used}) and "
                         f"expert_group_count ({groups}, {group_used} used)")


def _check_vocabulary(header: _Header) -> None:
    model = header.str("tokenizer.ggml.model")
    if model in ("none", "no_vocab"):
        raise ModelError(f"{header.path} has no vocabulary (tokenizer.ggml.model = '{model}'); fslm-edge needs a "
                         "model with a tokenizer")
    fld = header.reader.fields.get("tokenizer.ggml.tokens")
    if fld is None:
        return
    if fld.sub_type != STRING:
        raise header.bad("tokenizer.ggml.tokens", "is not an array of strings")
    if isinstance(fld.value, list) and len(set(fld.value)) != len(fld.value):
        # llama.cpp asserts that every token text is distinct
        raise header.bad("tokenizer.ggml.tokens", "lists the same token text twice")


@lru_cache(maxsize=32)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFInfo:
    import gguf

    from .ggufread import GGUFFile

    file = Path(path)
    check_gguf_file(file)
    reader = GGUFFile(file, summary=True)  # ModelError on a corrupt or truncated file
    header = _Header(reader, file)
    tensors = {t.name: TensorInfo(tuple(int(x) for x in t.shape), t.tensor_type.name, t.n_bytes)
               for t in reader.tensors}
    n_params = sum(int(np.prod(t.shape, dtype=object)) for t in reader.tensors)
    arch = header.str("general.architecture") or "unknown"
    kind = header.str("general.type") or "model"
    if kind == "adapter":
        check_adapter_header(header)
    else:
        check_model_header(header, arch, reader.tensors)
    file_type = header.int("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "?"
    except ValueError:
        ftype_name = str(file_type)
    return GGUFInfo(
        path=file,
        file_size=size,
        kind=kind,
        architecture=arch,
        name=header.str("general.name") or file.stem,
        file_type=ftype_name,
        n_params=n_params,
        context_length=header.int(f"{arch}.context_length"),
        n_layers=header.int(f"{arch}.block_count"),
        n_embd=header.int(f"{arch}.embedding_length"),
        n_head=header.int(f"{arch}.attention.head_count", per_layer=True),
        n_head_kv=header.int(f"{arch}.attention.head_count_kv", per_layer=True),
        lora_alpha=header.float("adapter.lora.alpha"),
        tensors=tensors,
    )


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Metadata and tensor shapes of a GGUF file (cached per file version)."""
    path = Path(path)
    try:
        stat = path.stat()
    except ValueError:
        raise ModelError(f"path {str(path)!r} contains a NUL byte") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size)


def check_adapter(adapter_path: Path, base: GGUFInfo) -> GGUFInfo:
    """Refuse a LoRA GGUF that was not made for ``base`` or holds unusable
    weights; return its info."""
    adapter_path = Path(adapter_path)
    rebuild = "build it again with: fslm-edge build STACK --data-dir DIR"
    try:
        info = read_gguf_info(adapter_path)
    except ModelError as exc:
        if not os.path.lexists(adapter_path) and "\0" not in str(adapter_path):
            raise AdapterError(f"adapter file not found: {adapter_path}; {rebuild}") from None
        raise AdapterError(str(exc)) from None
    if info.kind != "adapter":
        raise AdapterError(f"{adapter_path} is a GGUF model, not a LoRA adapter (general.type = '{info.kind}'); "
                           "use it as the stage's model = ... instead")
    if info.architecture != base.architecture:
        raise AdapterError(f"adapter {adapter_path.name} is for a '{info.architecture}' model but the base "
                           f"{base.path.name} is '{base.architecture}'; build the adapter for this base")
    alpha = info.lora_alpha
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
        raise AdapterError(f"adapter {adapter_path} has adapter.lora.alpha = {alpha}, which is not a usable "
                           f"scale (a finite number >= 0); {rebuild}")
    pairs = [name for name in info.tensors if name.endswith(".lora_a")]
    if not pairs:
        raise AdapterError(f"adapter {adapter_path} holds no LoRA tensors (.lora_a/.lora_b pairs); {rebuild}")
    for name in info.tensors:
        if name.endswith(".lora_b") and name[: -len(".lora_b")] + ".lora_a" not in info.tensors:
            raise AdapterError(f"adapter {adapter_path.name} has {name} without its .lora_a; {rebuild}")
    for name in pairs:
        _check_pair(adapter_path, info, base, name[: -len(".lora_a")])
    stat = adapter_path.stat()
    bad = _first_nonfinite_tensor(str(adapter_path), stat.st_mtime_ns, stat.st_size)
    if bad is not None:
        raise AdapterError(f"adapter {adapter_path} has NaN or infinite weights ({bad}): its training diverged; "
                           f"{rebuild} (a lower learning_rate)")
    return info


def _check_pair(adapter_path: Path, info: GGUFInfo, base: GGUFInfo, weight: str) -> None:
    lora_a, lora_b = info.tensors[weight + ".lora_a"], info.tensors.get(weight + ".lora_b")
    target = base.tensors.get(weight)
    if lora_b is None or target is None:
        missing = weight + (".lora_b" if lora_b is None else " in the base model")
        raise AdapterError(f"adapter {adapter_path.name} does not fit base {base.path.name}: no {missing}")
    # ggml shapes: base [n_in, n_out], lora_a [n_in, r], lora_b [r, n_out]
    if len(lora_a.shape) != 2 or len(lora_b.shape) != 2 or lora_a.shape[0] != target.shape[0] \
            or lora_b.shape[-1] != target.shape[-1] or lora_a.shape[1] != lora_b.shape[0]:
        raise AdapterError(
            f"adapter {adapter_path.name} does not fit base {base.path.name}: {weight} is "
            f"{list(target.shape)} in the base but the adapter has A {list(lora_a.shape)}, B {list(lora_b.shape)}; "
            "it was made for another base model"
        )


@lru_cache(maxsize=32)
def _first_nonfinite_tensor(path: str, mtime_ns: int, size: int) -> str | None:
    """The first tensor holding NaN or inf, or None. Adapters are small (MBs),
    so every tensor is decoded; only float data can hold NaN: F32/F16/BF16
    directly, quantized blocks through their float scales (gguf's numpy
    dequantizer). Types it cannot decode are skipped: llama.cpp does not
    apply them to a LoRA anyway."""
    import gguf

    from .ggufread import GGUFFile

    reader = GGUFFile(path, summary=True)
    for tensor in reader.tensors:
        kind = tensor.tensor_type
        if kind in (gguf.GGMLQuantizationType.I8, gguf.GGMLQuantizationType.I16, gguf.GGMLQuantizationType.I32,
                    gguf.GGMLQuantizationType.I64):
            continue  # integers are always finite
        if kind == gguf.GGMLQuantizationType.F32:
            values = reader.raw(tensor).view(np.float32)
        elif kind == gguf.GGMLQuantizationType.F16:
            values = reader.raw(tensor).view(np.float16)
        elif kind == gguf.GGMLQuantizationType.BF16:
            # the exponent bits all set is inf or NaN, as in float32
            values = (reader.raw(tensor).view(np.uint16) & 0x7F80) != 0x7F80
            if not values.all():
                return tensor.name
            continue
        else:
            try:
                values = gguf.quants.dequantize(reader.raw(tensor), kind)
            except (NotImplementedError, ValueError, KeyError):
                continue
        if not np.isfinite(values).all():
            return tensor.name
    return None
