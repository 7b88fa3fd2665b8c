"""The whole build pipeline on tiny random models of both architectures:
train a few steps, export the adapter, merge, quantize, load in llama.cpp and
compare logits with torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from build_fixtures import QA_ROWS, tiny_gguf, tiny_hf_model, write_jsonl, write_stack  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("peft")

DATA = '{ file = "qa.jsonl", target = "answer", fields = { input = "question" } }'


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "tiny"  # shared with the other build test modules
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FSLM_EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _held_out(tokenizer_gguf: Path) -> list[list[int]]:
    from fslm_edge.convert.data import GGUFTokenizer

    with GGUFTokenizer(tokenizer_gguf) as tok:
        texts = ["Question: What is 12 plus 30?", "The quick brown fox jumps over the lazy dog. " * 3,
                 "<|im_start|>user\nWhat is 7 plus 7?<|im_end|>\n<|im_start|>assistant\n14<|im_end|>"]
        return [tok.prompt_ids(t) for t in texts]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tiny_model_gguf_matches_transformers(tiny_dir, arch):
    """Our HF->GGUF writer and GGUF->HF reader agree with llama.cpp's graph."""
    from fslm_edge.convert.compare import agreement, llama_cpp_logits, torch_logits
    from fslm_edge.convert.gguf_torch import gguf_to_hf

    model, path = tiny_hf_model(arch), tiny_gguf(tiny_dir, arch)
    seqs = _held_out(path)
    result = agreement(torch_logits(model, seqs), llama_cpp_logits(path, seqs))
    assert result.agreement >= 0.99 and result.mean_kl < 1e-3, result
    _, state = gguf_to_hf(path)
    for name, tensor in model.state_dict().items():
        if name != "lm_head.weight":
            np.testing.assert_allclose(state[name], tensor.numpy(), atol=1e-6, err_msg=name)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_build_train_export_merge_quantize_agree(tiny_dir, tmp_path, arch):
    from peft import PeftModel

    from fslm_edge.convert.build import BuildOptions, build_stack
    from fslm_edge.convert.compare import agreement, llama_cpp_logits, torch_logits
    from fslm_edge.convert.gguf_torch import load_torch_base

    base = tiny_gguf(tiny_dir, arch)
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    stack = write_stack(tmp_path, base, DATA)
    options = BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", max_steps=6, merge=True, quant="q8_0",
                           progress=False)
    [built] = list(build_stack(stack, options))
    assert built.steps == 6 and built.train_loss is not None and built.val_loss is not None
    for path in (built.adapter, built.merged, built.quantized):
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        assert manifest["base"]["sha256"] and manifest["data"]["qa.jsonl"] and manifest["recipe"]["rank"] == 4
        assert manifest["losses"]["val"] == pytest.approx(built.val_loss)
    seqs = _held_out(base)
    tuned = PeftModel.from_pretrained(load_torch_base(base), str(built.folder / "adapter"))
    reference = torch_logits(tuned, seqs)
    base_only = agreement(reference, llama_cpp_logits(base, seqs))
    with_lora = agreement(reference, llama_cpp_logits(base, seqs, lora=built.adapter))
    merged = agreement(reference, llama_cpp_logits(built.merged, seqs))
    quantized = agreement(reference, llama_cpp_logits(built.quantized, seqs))
    assert base_only.max_abs_logit_diff > 0.05, "training changed nothing: the comparison would prove nothing"
    assert with_lora.agreement >= 0.99 and with_lora.mean_kl < 1e-3, with_lora
    assert with_lora.max_abs_logit_diff < base_only.max_abs_logit_diff / 5
    assert merged.agreement >= 0.99 and merged.mean_kl < 1e-3, merged
    assert quantized.mean_kl < 0.05, quantized


def test_adapter_for_another_base_is_refused(tiny_dir, tmp_path):
    from fslm_edge import AdapterError, Stack

    from fslm_edge.convert.build import BuildOptions, build_stack

    llama = tiny_gguf(tiny_dir, "llama")
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:10])
    stack = write_stack(tmp_path, llama, DATA)
    [built] = list(build_stack(stack, BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "o", max_steps=1,
                                                   progress=False)))
    other = tiny_gguf(tiny_dir, "gemma3")
    for base in (other, "smollm2-135m-instruct"):
        runtime = tmp_path / "use.toml"
        runtime.write_text(f'[stack]\nname = "x"\nmodel = "{base}"\n\n[[stage]]\nname = "a"\n'
                           f'template = "{{input}}"\nadapter = "{built.adapter}"\n')
        with pytest.raises(AdapterError, match="another base|is for a"):
            Stack.load(runtime)
