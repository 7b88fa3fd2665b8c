"""A Hugging Face safetensors folder as the trained base (``hf_base``): the
LoRA trained on it applies over the matching GGUF in llama.cpp, the merge
writes a GGUF with the GGUF's tokenizer, and a mismatched folder is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from build_fixtures import QA_ROWS, tiny_hf_model, write_jsonl, write_stack  # noqa: E402

from fslm_edge.errors import InputError, ModelError  # noqa: E402

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("build_cache")
pytest.importorskip("peft")

DATA = '{ file = "qa.jsonl", target = "answer", fields = { input = "question" } }'




def _save(folder: Path, seed: int = 0, **changes) -> Path:
    model = tiny_hf_model("llama", seed)
    for key, value in changes.items():
        setattr(model.config, key, value)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_hf_folder_base_trains_exports_and_merges(tiny, tmp_path):
    from peft import PeftModel

    from fslm_edge.convert.build import BuildOptions, build_stack
    from fslm_edge.convert.compare import agreement, llama_cpp_logits, torch_logits
    from fslm_edge.convert.data import GGUFTokenizer
    from fslm_edge.convert.hf_base import load_hf_base

    hf = _save(tmp_path / "hf")
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    stack = write_stack(tmp_path, tiny, DATA, extra='hf_base = "hf"\n')
    options = BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", max_steps=4, merge=True, progress=False)
    [built] = list(build_stack(stack, options))
    with GGUFTokenizer(tiny) as tok:
        seqs = [tok.prompt_ids("Question: What is 3 plus 4?"), tok.prompt_ids("The quick brown fox. " * 4)]
    reference = torch_logits(PeftModel.from_pretrained(load_hf_base(hf, tiny), str(built.folder / "adapter")), seqs)
    with_lora = agreement(reference, llama_cpp_logits(tiny, seqs, lora=built.adapter))
    merged = agreement(reference, llama_cpp_logits(built.merged, seqs))
    assert with_lora.agreement >= 0.99 and with_lora.mean_kl < 1e-3, with_lora
    assert merged.agreement >= 0.99 and merged.mean_kl < 1e-3, merged
    import json

    manifest = json.loads(built.adapter.with_name(built.adapter.name + ".manifest.json").read_text())
    assert list(manifest["hf_base"]["weights"]) == ["model.safetensors"]


def test_hf_folder_errors(tiny, tmp_path):
    from fslm_edge.convert.build import BuildOptions, build_stack

    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:10])
    options = BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", max_steps=1, progress=False)
    missing = write_stack(tmp_path, tiny, DATA, extra='hf_base = "nowhere"\n', name="a.toml")
    with pytest.raises(InputError, match="hf_base: .*nowhere is not a folder"):
        list(build_stack(missing, options))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    empty = write_stack(tmp_path, tiny, DATA, extra='hf_base = "empty"\n', name="b.toml")
    with pytest.raises(InputError, match="has no \\*.safetensors weights"):
        list(build_stack(empty, options))
    _save(tmp_path / "wide", num_hidden_layers=3)
    wide = write_stack(tmp_path, tiny, DATA, extra='hf_base = "wide"\n', name="c.toml")
    with pytest.raises(ModelError, match="num_hidden_layers = 3, but tiny-llama-0.gguf has 2"):
        list(build_stack(wide, options))
