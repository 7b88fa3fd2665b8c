"""GPU-machine driver (how the shipped qa answer adapter was trained): usage
    BASE=SmolLM2-135M-Instruct.Q4_1.gguf TOK=tokenizer.json ADAPTERS=DIR DATA=DATA_DIR python3 build_qa_answer.py OUT
with DIR/recall and DIR/reason the PEFT folders of the committed recall and reason adapters.

Device-side driver: build the answer stage of stacks/qa.toml on CUDA without llama.cpp.

Rows of the answer stage whose upstream (recall -> reason) is not in the carried llama.cpp cache are
generated in torch with the committed recall and reason LoRA adapters (PEFT folders), greedy with the
runtime's repeat penalty and stop rules, and written into the build's own upstream cache; then
convert.build.build_stack trains the stage as `fslm-edge build --device cuda --stage answer` does.
"""
# ruff: noqa: E402  (llama_cpp is blocked before the project modules are imported)
import json
import os
import shutil
import sys
import tempfile
import time
sys.modules["llama_cpp"] = None
sys.path.insert(0, os.getcwd())
from pathlib import Path
import importlib.util
spec = importlib.util.spec_from_file_location("build_math", Path(__file__).with_name("build_math.py"))
rm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rm)
import torch
import fslm_edge.convert.build as cbuild
import fslm_edge.convert.data as cdata
import fslm_edge.convert.upstream as cup
from fslm_edge.convert.gguf_torch import load_torch_base
from fslm_edge.config import load_stack_config
from fslm_edge.prompts import stage_prompt

DEV = rm.DEV
KEEP = {"peft_type", "r", "lora_alpha", "target_modules", "lora_dropout", "bias", "task_type", "fan_in_fan_out",
        "inference_mode", "init_lora_weights", "base_model_name_or_path"}


def clean_adapter(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "adapter_model.safetensors", dst / "adapter_model.safetensors")
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k in KEEP}))
    return dst


def collect_missing(stack, options):
    """Questions whose upstream is not cached, found by loading the stage data once."""
    missing = []
    real = cup.UpstreamOutputs.outputs

    def outputs(self, q):
        got = self._cache.get(q)
        if got is None:
            missing.append(q)
            return {"recall": "x", "reason": "x"}
        return got["outputs"]

    cup.UpstreamOutputs.outputs = outputs
    config = load_stack_config(stack)
    stage = config.stages[2]
    folder = Path(options.out_dir) / stage.name
    with cup.UpstreamOutputs(config, stage, folder / "upstream.jsonl") as up:
        cdata.load_stage_data(stage, Path(options.data_dir), rm.TokShim(rm.BASE), up)
    cup.UpstreamOutputs.outputs = real
    return config, stage, folder, sorted(set(missing))


def main():
    from peft import PeftModel
    out_dir = Path(sys.argv[1])
    stack = Path(os.environ.get("STACK", "stacks/qa.toml"))
    data_dir = Path(os.environ.get("DATA", ".gpu/data"))
    cdata.GGUFTokenizer = rm.TokShim
    cbuild.resolve_model = lambda name, base_dir: rm.BASE
    options = cbuild.BuildOptions(data_dir=data_dir, out_dir=out_dir, stage="answer", progress=False, device=DEV,
                                  threads=8, max_steps=int(os.environ.get("MAX_STEPS", 0)) or None)
    config, stage, folder, missing = collect_missing(stack, options)
    print("upstream rows to generate", len(missing), flush=True)
    if missing:
        recall, reason = config.stages[0], config.stages[1]
        shim = rm.TokShim(rm.BASE)
        ad = Path(os.environ.get("ADAPTERS", ".gpu/qa"))
        base = load_torch_base(rm.BASE).to(DEV).eval()
        scratch = Path(tempfile.mkdtemp(prefix="fslm-adapters-"))
        recall_dir = clean_adapter(ad / "recall", scratch / "recall")
        model = PeftModel.from_pretrained(base, str(recall_dir), adapter_name="recall")
        model.load_adapter(str(clean_adapter(ad / "reason", scratch / "reason")), adapter_name="reason")
        model.eval()
        up = cup.UpstreamOutputs(config, stage, folder / "upstream.jsonl")
        batch = int(os.environ.get("BATCH", "384"))
        t0 = time.time()
        for start in range(0, len(missing), 2048):
            qs = missing[start:start + 2048]
            model.set_adapter("recall")
            prompts = [stage_prompt(recall, {"input": q.strip()}, shim.chat) for q in qs]
            rec = rm.generate(model, shim, recall, prompts, batch)
            model.set_adapter("reason")
            rea = rm.generate(model, shim, reason, [stage_prompt(reason, {"input": q.strip(), "recall": r}, shim.chat)
                                                 for q, r in zip(qs, rec)], batch)
            for q, r, s in zip(qs, rec, rea):
                up._cache.put(q, {"outputs": {"recall": r, "reason": s}})
            print(f"upstream {start + len(qs)}/{len(missing)} {time.time() - t0:.0f}s", flush=True)
        del model, base
        torch.cuda.empty_cache()
    for art in cbuild.build_stack(stack, options):
        print("built", art.stage, art.adapter, art.steps, art.train_loss, art.val_loss, flush=True)


if __name__ == "__main__":
    main()
