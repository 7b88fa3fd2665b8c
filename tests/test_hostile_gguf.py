"""Hostile GGUF files and model references: every malformed header is a
ModelError (or AdapterError) naming the file and the fault, quickly, and the
header values llama.cpp would abort on never reach it."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from gguf_fixtures import ARRAY, FLOAT32, INT32, STRING, UINT32, UINT64, KV, RawTensor, gguf_bytes, read_kvs, \
    read_tensors, set_kv, tiny_llama_parts, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fslm_edge.errors import AdapterError, ModelError
from fslm_edge.ggufinfo import check_adapter, read_gguf_info
from fslm_edge.ggufread import SUMMARY_STRING_CHARS, GGUFFile
from fslm_edge.models import resolve_model


@pytest.fixture(scope="module")
def tiny_parts(smollm2_path):
    return tiny_llama_parts(smollm2_path)


@pytest.fixture
def tiny_with(tmp_path, tiny_parts):
    """Write the tiny llama with some header fields changed: tiny_with(key=(vtype, value[, sub]))."""

    def make(name: str = "m.gguf", tensors=None, **changes) -> Path:
        kvs, default_tensors = tiny_parts
        for key, change in changes.items():
            kvs = set_kv(kvs, key.replace("__", "."), *(change or (None,)))
        return write(tmp_path / name, gguf_bytes(kvs, default_tensors if tensors is None else tensors))

    return make


def small_gguf(extra: list[KV] | None = None, tensors: list[RawTensor] | None = None, **kwargs) -> bytes:
    kvs = [KV("general.architecture", STRING, "llama"), KV("general.type", STRING, "adapter"),
           KV("adapter.type", STRING, "lora")] + (extra or [])
    data = np.arange(32, dtype=np.float32).tobytes()
    return gguf_bytes(kvs, [RawTensor("t.weight", (32,), 0, data)] if tensors is None else tensors, **kwargs)


def refused(path: Path, *words: str) -> str:
    with pytest.raises(ModelError) as caught:
        GGUFFile(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message
    return message


# -- the reader: counts and lengths bounded by the file -------------------------------------------------------


def test_a_huge_tensor_count_is_refused_before_allocating(tmp_path):
    refused(write(tmp_path / "n.gguf", small_gguf(n_tensors=1 << 40)), "1099511627776 tensors")


def test_a_huge_key_count_is_refused(tmp_path):
    refused(write(tmp_path / "k.gguf", small_gguf(n_kv=1 << 62)), "keys")


def test_a_string_longer_than_the_file_is_refused(tmp_path):
    data = bytearray(small_gguf())
    key_length_at = 4 + 4 + 8 + 8
    data[key_length_at:key_length_at + 8] = struct.pack("<Q", 1 << 62)
    refused(write(tmp_path / "s.gguf", bytes(data)), "bytes")


def test_alignment_zero_or_not_a_power_of_two_is_refused(tmp_path):
    for align in (0, 3, 48):
        path = write(tmp_path / f"a{align}.gguf", small_gguf([KV("general.alignment", UINT32, align)], alignment=32))
        refused(path, "general.alignment", "power of two")
    refused(write(tmp_path / "as.gguf", small_gguf([KV("general.alignment", STRING, "32")])), "uint32")


def test_nested_arrays_are_refused_without_recursion(tmp_path):
    nested = struct.pack("<IQ", ARRAY, 1) * 3000 + struct.pack("<IQi", INT32, 1, 1)
    path = write(tmp_path / "nest.gguf", small_gguf([KV("deep", ARRAY, nested)]))
    refused(path, "'deep'", "array of arrays")


@pytest.mark.parametrize("problem, words", [
    (dict(version=1), ["version 1"]),
    (dict(extra=[KV("x", 99, b"\0" * 4)]), ["unknown value type 99"]),
    (dict(extra=[KV("x", ARRAY, struct.pack("<IQ", 77, 1) + b"\0" * 4)]), ["unknown type 77"]),
    (dict(extra=[KV("x", UINT32, 1), KV("x", UINT32, 2)]), ["duplicate key 'x'"]),
    (dict(extra=[KV("", UINT32, 1)]), ["empty"]),
    (dict(tensors=[RawTensor("t", (32,), 99, b"\0" * 128)]), ["unknown type 99"]),
    (dict(tensors=[RawTensor("t", (2, 2, 2, 2, 2), 0, b"\0" * 128)]), ["5 dimensions"]),
    (dict(tensors=[RawTensor("t", (0,), 0, b"")]), ["shape [0]"]),
    (dict(tensors=[RawTensor("t", (33,), 8, b"\0" * 34)]), ["multiple of 32"]),  # Q8_0 rows are blocks of 32
    (dict(tensors=[RawTensor("t", (1 << 40,), 0, b"\0" * 128)]), ["past the end"]),
    (dict(tensors=[RawTensor("t", (32,), 0, b"\0" * 128), RawTensor("t", (32,), 0, b"\0" * 128)]), ["duplicate"]),
    (dict(tensors=[RawTensor("t" * 64, (32,), 0, b"\0" * 128)]), ["longer than 63"]),
    (dict(tensors=[RawTensor("t", (32,), 0, b"\0" * 128)], offsets=[7]), ["not a multiple of the alignment"]),
])
def test_malformed_headers_name_the_fault(tmp_path, problem, words):
    refused(write(tmp_path / "bad.gguf", small_gguf(**problem)), *words)


def test_empty_and_truncated_files(tmp_path):
    with pytest.raises(ModelError, match="empty|cannot read"):
        GGUFFile(write(tmp_path / "empty.gguf", b""))
    data = small_gguf()
    for cut in (3, 10, 30, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelError):
            GGUFFile(write(tmp_path / f"cut{cut}.gguf", data[:cut]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutated_header_parses_or_is_a_model_error(tmp_path, data):
    original = small_gguf([KV("general.name", STRING, "x" * 40), KV("ids", ARRAY, [1, 2, 3], INT32),
                           KV("words", ARRAY, ["a", "bc"], STRING), KV("f", FLOAT32, 0.5)])
    header_end = len(original) - 128
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, header_end - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(mutated))))
    path = write(tmp_path / "fuzz.gguf", bytes(mutated[:cut]))
    try:
        GGUFFile(path)
    except ModelError as exc:
        assert str(path) in str(exc)


def test_a_huge_string_is_kept_short_in_summaries(tmp_path):
    description = "d" * (50 << 20)
    path = write(tmp_path / "desc.gguf", small_gguf([KV("general.description", STRING, description),
                                                     KV("general.name", STRING, "named")]))
    field = GGUFFile(path, summary=True).fields["general.description"]
    assert field.truncated and len(field.value) == SUMMARY_STRING_CHARS and field.count == 50 << 20
    assert read_gguf_info(path).name == "named"
    assert GGUFFile(path).get("general.description") == description  # the build tools still see all of it


def test_huge_arrays_are_walked_not_kept_in_summaries(tmp_path):
    path = write(tmp_path / "arr.gguf", small_gguf([KV("big", ARRAY, range(1 << 21), INT32),
                                                    KV("after", UINT32, 7)]))
    reader = GGUFFile(path, summary=True)
    assert reader.fields["big"].value is None and reader.fields["big"].count == 1 << 21
    assert reader.get("after") == 7


# -- header values llama.cpp aborts on ------------------------------------------------------------------------


def test_the_tiny_llama_is_a_valid_model_llama_cpp_loads(tiny_with):
    from fslm_edge.engine import LoadedModel

    path = tiny_with()
    assert resolve_model(str(path)) == path
    assert read_gguf_info(path).n_layers == 2
    model = LoadedModel(path, 128, 1)
    assert model.tokenize_plain("Hello") == [19556]


@pytest.mark.parametrize("count", [0, 1, 3, 1000])
def test_block_count_must_match_the_blocks_present(tiny_with, count):
    path = tiny_with(llama__block_count=(UINT32, count))
    with pytest.raises(ModelError, match=f"llama.block_count is {count}"):
        resolve_model(str(path))


@pytest.mark.parametrize("changes, words", [
    (dict(llama__embedding_length=(STRING, "64")), "llama.embedding_length is not an integer"),
    (dict(llama__embedding_length=(UINT32, 0)), "llama.embedding_length is 0"),
    (dict(llama__context_length=(UINT32, 0)), "llama.context_length is 0"),
    (dict(llama__context_length=(UINT32, 4294967295)), "llama.context_length is 4294967295"),
    (dict(llama__rope__scaling__type=(STRING, "warp")), "llama.rope.scaling.type is 'warp'"),
    (dict(llama__expert_count=(UINT32, 5000), llama__expert_used_count=(UINT32, 2)), "llama.expert_count"),
    (dict(llama__expert_used_count=(UINT32, 2)), "llama.expert_count"),
    (dict(llama__nextn_predict_layers=(UINT32, 9)), "nextn_predict_layers"),
    (dict(llama__attention__layer_norm_rms_epsilon=(FLOAT32, math.nan)), "layer_norm_rms_epsilon is nan"),
    (dict(llama__attention__layer_norm_rms_epsilon=(FLOAT32, -1e-5)), "layer_norm_rms_epsilon is -1e-05"),
    (dict(llama__rope__freq_base=(FLOAT32, math.inf)), "llama.rope.freq_base is inf"),
    (dict(tokenizer__ggml__model=(STRING, "none")), "no vocabulary"),
    (dict(tokenizer__ggml__tokens=(ARRAY, ["a", "b", "a"], STRING)), "the same token text twice"),
    (dict(tokenizer__ggml__tokens=(ARRAY, [1, 2], INT32)), "not an array of strings"),
    (dict(general__architecture=(UINT64, 5)), "general.architecture is not a string"),
    (dict(tokenizer__chat_template=(STRING, "{% for %}")), "does not compile"),
    (dict(tokenizer__chat_template=(STRING, "x" * (1 << 20))), "more than the 65536"),
    (dict(tokenizer__chat_template__tool_use=(UINT32, 1)), "is not a string"),
])
def test_header_values_llama_cpp_aborts_on_are_refused(tiny_with, changes, words):
    path = tiny_with(**changes)
    with pytest.raises(ModelError) as caught:
        resolve_model(str(path))
    assert words in str(caught.value) and str(path) in str(caught.value)


def test_tensor_data_llama_cpp_cannot_map_aligned_is_refused(tmp_path, tiny_parts):
    kvs, tensors = tiny_parts
    path = write(tmp_path / "a1.gguf", gguf_bytes(set_kv(kvs, "general.alignment", UINT32, 1), tensors, alignment=1))
    with pytest.raises(ModelError, match="not a multiple of 32 .general.alignment is 1"):
        resolve_model(str(path))


def test_cli_reports_one_error_line_for_a_bad_block_count(tmp_path, tiny_with):
    model = tiny_with(llama__block_count=(UINT32, 1000))
    stack = tmp_path / "s.toml"
    stack.write_text(f'[stack]\nname = "t"\nmodel = "{model}"\nthreads = 1\n\n[[stage]]\nname = "a"\n'
                     'template = "{input}"\n')
    for command in (["info", str(stack)], ["run", str(stack), "hi", "--set", "*.max_tokens=1"]):
        done = subprocess.run([str(Path(sys.executable).parent / "fslm-edge"), *command], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "block_count is 1000" in lines[0], done.stderr


# -- model references -------------------------------------------------------------------------------------


def test_a_nul_byte_in_a_model_path_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="NUL"):
        resolve_model("m\0.gguf", tmp_path)
    with pytest.raises(ModelError, match="NUL"):
        read_gguf_info("m\0.gguf")


def _finishes(function, seconds: float = 20.0):
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "it hung"
    return outcome


def test_a_fifo_as_model_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    outcome = _finishes(lambda: resolve_model(str(fifo)))
    assert isinstance(outcome.get("error"), ModelError) and "not a regular file" in str(outcome["error"])


def test_only_regular_files_are_models(tmp_path, adapters):
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ModelError, match="is a directory"):
        resolve_model(str(tmp_path / "dir.gguf"))
    with pytest.raises(ModelError, match="not a regular file"):
        resolve_model("/dev/zero")
    with pytest.raises(ModelError, match="LoRA adapter, not a model"):
        resolve_model(str(adapters["a"]))
    with pytest.raises(ModelError, match="truncated"):
        resolve_model(str(write(tmp_path / "short.gguf", b"GGUF\3\0\0\0")))


# -- adapters ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_info(smollm2_path):
    return read_gguf_info(smollm2_path)


def rewritten_adapter(source: Path, target: Path, changes: dict | None = None, tensors=None) -> Path:
    kvs = read_kvs(source)
    for key, change in (changes or {}).items():
        kvs = set_kv(kvs, key, *change)
    return write(target, gguf_bytes(kvs, read_tensors(source) if tensors is None else tensors))


def test_an_adapter_without_tensors_is_refused(tmp_path, adapters, base_info):
    path = rewritten_adapter(adapters["a"], tmp_path / "empty.gguf", tensors=[])
    with pytest.raises(AdapterError, match="no LoRA tensors.*fslm-edge build") as caught:
        check_adapter(path, base_info)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -8.0])
def test_an_unusable_alpha_is_refused(tmp_path, adapters, base_info, alpha):
    path = rewritten_adapter(adapters["a"], tmp_path / "alpha.gguf", {"adapter.lora.alpha": (FLOAT32, alpha)})
    with pytest.raises(AdapterError, match="adapter.lora.alpha.*fslm-edge build"):
        check_adapter(path, base_info)


@pytest.mark.parametrize("key, change, words", [
    ("adapter.lora.alpha", (UINT32, 8), "adapter.lora.alpha is not a float32"),
    ("adapter.type", (UINT32, 1), "adapter.type is not a string"),
    ("adapter.type", (STRING, "ia3"), "adapter.type is 'ia3', not 'lora'"),
    ("adapter.type", (None,), "adapter.type is None"),
    ("general.architecture", (ARRAY, ["llama"], STRING), "general.architecture is not a string"),
])
def test_adapter_keys_llama_cpp_reads_unchecked_must_have_their_types(tmp_path, adapters, base_info, key, change,
                                                                        words):
    path = rewritten_adapter(adapters["a"], tmp_path / "typed.gguf", {key: change})
    with pytest.raises(AdapterError) as caught:
        check_adapter(path, base_info)
    assert words in str(caught.value) and str(path) in str(caught.value)


def _poisoned(tensor: RawTensor, kind: str) -> RawTensor:
    import gguf

    values = np.frombuffer(tensor.data, dtype=np.float32).copy().reshape(tuple(reversed(tensor.shape)))
    bad = math.nan if kind != "f16" else math.inf
    if kind == "f32":
        values.flat[5] = bad
        return RawTensor(tensor.name, tensor.shape, 0, values.tobytes())
    if kind == "f16":
        values.flat[5] = bad
        return RawTensor(tensor.name, tensor.shape, 1, values.astype(np.float16).tobytes())
    if kind == "bf16":
        values.flat[5] = bad
        return RawTensor(tensor.name, tensor.shape, 30, (values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    blocks = bytearray(gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0).tobytes())
    blocks[0:2] = np.float16(math.nan).tobytes()  # the first block's scale
    return RawTensor(tensor.name, tensor.shape, 8, bytes(blocks))


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0"])
def test_nonfinite_adapter_weights_are_refused(tmp_path, adapters, base_info, kind):
    tensors = read_tensors(adapters["a"])
    index = next(i for i, t in enumerate(tensors) if t.name == "blk.3.attn_q.weight.lora_a")
    tensors[index] = _poisoned(tensors[index], kind)
    path = rewritten_adapter(adapters["a"], tmp_path / f"{kind}.gguf", tensors=tensors)
    with pytest.raises(AdapterError, match="NaN or infinite weights.*blk.3.attn_q.weight.lora_a.*fslm-edge build"):
        check_adapter(path, base_info)


def test_finite_adapters_of_every_decoded_type_pass(tmp_path, adapters, base_info):
    import gguf

    tensors = read_tensors(adapters["a"])
    for i, tensor in enumerate(tensors):
        if tensor.name.endswith(".lora_a"):
            values = np.frombuffer(tensor.data, dtype=np.float32).reshape(tuple(reversed(tensor.shape)))
            blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0).tobytes()
            tensors[i] = RawTensor(tensor.name, tensor.shape, 8, blocks)
    path = rewritten_adapter(adapters["a"], tmp_path / "q8.gguf", tensors=tensors)
    assert check_adapter(path, base_info).kind == "adapter"
    assert check_adapter(adapters["a"], base_info).lora_alpha == 8.0


def test_a_fifo_or_missing_adapter_is_an_adapter_error(tmp_path, base_info):
    fifo = tmp_path / "a.gguf"
    os.mkfifo(fifo)
    outcome = _finishes(lambda: check_adapter(fifo, base_info))
    assert isinstance(outcome.get("error"), AdapterError)
    with pytest.raises(AdapterError, match="not found.*fslm-edge build"):
        check_adapter(tmp_path / "missing.gguf", base_info)
