"""The build pipeline on the real SmolLM2-135M-Instruct base (slow: run with -m slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from build_fixtures import QA_ROWS, write_jsonl, write_stack  # noqa: E402

pytest.importorskip("peft")

DATA = '{ file = "qa.jsonl", target = "answer", fields = { input = "question" } }'


@pytest.mark.slow
def test_real_smollm2_adapter_and_merge_agree_with_torch(tmp_path, monkeypatch):
    from peft import PeftModel

    from fslm_edge.convert.build import BuildOptions, build_stack
    from fslm_edge.convert.compare import agreement, llama_cpp_logits, torch_logits
    from fslm_edge.convert.data import GGUFTokenizer
    from fslm_edge.convert.gguf_torch import load_torch_base
    from fslm_edge import Stack
    from fslm_edge.models import resolve_model

    base = resolve_model("smollm2-135m-instruct")
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    stack = write_stack(tmp_path, base, DATA, extra="learning_rate = 0.002\n")
    options = BuildOptions(data_dir=tmp_path, out_dir=tmp_path / "out", max_steps=3, merge=True, progress=False)
    [built] = list(build_stack(stack, options))
    with GGUFTokenizer(base) as tok:
        seqs = [tok.prompt_ids(t) for t in (
            "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nQuestion: What is 21 plus 4?<|im_end|>"
            "\n<|im_start|>assistant\n25<|im_end|>", "Photosynthesis turns light, water and carbon dioxide into "
            "sugar and oxygen in the leaves of green plants, which store the energy for later use.")]
    reference = torch_logits(PeftModel.from_pretrained(load_torch_base(base), str(built.folder / "adapter")), seqs)
    with_lora = agreement(reference, llama_cpp_logits(base, seqs, lora=built.adapter))
    merged = agreement(reference, llama_cpp_logits(built.merged, seqs))
    assert with_lora.agreement >= 0.95 and with_lora.mean_kl < 0.02, with_lora
    assert merged.agreement >= 0.95 and merged.mean_kl < 0.02, merged
    runtime = tmp_path / "use.toml"
    runtime.write_text(f'[stack]\nname = "x"\nmodel = "smollm2-135m-instruct"\n\n[[stage]]\nname = "a"\n'
                       f'template = "Question: {{input}}"\nsystem = "Answer briefly."\nmax_tokens = 4\n'
                       f'adapter = "{built.adapter}"\n')
    with Stack.load(runtime) as loaded:
        assert loaded.run("What is 2 plus 2?").answer is not None
