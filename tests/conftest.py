"""Shared fixtures: the packaged SmolLM2 model, stack files, random LoRA adapters."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fslm_edge.convert.gguf_out import write_random_lora as random_lora
from fslm_edge.models import resolve_model

SMOLLM2_DIMS = {"n_layers": 30, "n_embd": 576, "n_kv": 192}


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return resolve_model("smollm2-135m-instruct")


def write_stack(folder: Path, body: str, name: str = "stack.toml", **stack_keys) -> Path:
    header = {"name": "test", "context_size": 1024, **stack_keys}
    lines = ["[stack]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in header.items()]
    path = folder / name
    path.write_text("\n".join(lines) + "\n\n" + textwrap.dedent(body))
    return path


@pytest.fixture
def make_stack(tmp_path):
    def make(body: str, **stack_keys) -> Path:
        return write_stack(tmp_path, body, **stack_keys)

    return make


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return {
        "a": random_lora(folder / "a.gguf", seed=1, scale=0.3),
        "b": random_lora(folder / "b.gguf", seed=2, scale=0.3),
        "wrong_shape": random_lora(folder / "wrong_shape.gguf", n_layers=2, n_in=64, n_q=64, n_kv=32),
        "wrong_arch": random_lora(folder / "wrong_arch.gguf", arch="gemma3", n_layers=2),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny random llama GGUF the build tests train on (made once per session's temp folder)."""
    from build_fixtures import tiny_gguf

    folder = tmp_path_factory.getbasetemp() / "tiny"
    folder.mkdir(exist_ok=True)
    return tiny_gguf(folder, "llama")


@pytest.fixture
def build_cache(tmp_path_factory, monkeypatch) -> None:
    """Torch conversions of the tiny models cached in the session's temp folder
    (build test modules use it for every test: ``pytestmark``)."""
    monkeypatch.setenv("FSLM_EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
