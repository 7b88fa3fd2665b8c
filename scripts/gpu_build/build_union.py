"""GPU-machine driver for the union ablation of stacks/qa.toml: usage
    BASE=SmolLM2-135M-Instruct.Q4_1.gguf TOK=tokenizer.json DATA=DATA_DIR python3 build_union.py OUT
OUT/reason/upstream.jsonl and OUT/answer/upstream.jsonl must already hold the earlier stages' outputs for
every training row (the caches the stage builds wrote); then convert.union.build_union trains ONE adapter
on the union of the stages' data for as many steps as the stages together, as
`fslm-edge build stacks/qa.toml --union --device cuda` does.
"""
# ruff: noqa: E402  (llama_cpp is blocked before the project modules are imported)
import importlib.util
import os
import sys

sys.modules["llama_cpp"] = None
sys.path.insert(0, os.getcwd())
from pathlib import Path

spec = importlib.util.spec_from_file_location("build_math", Path(__file__).with_name("build_math.py"))
rm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rm)
import fslm_edge.convert.data as cdata
import fslm_edge.convert.union as cunion
from fslm_edge.convert.build import BuildOptions


def main():
    cdata.GGUFTokenizer = rm.TokShim
    cunion.resolve_model = lambda name, base_dir: rm.BASE
    options = BuildOptions(data_dir=Path(os.environ.get("DATA", ".gpu/data")), out_dir=Path(sys.argv[1]),
                           progress=False, device=rm.DEV, threads=8,
                           max_steps=int(os.environ.get("MAX_STEPS", 0)) or None)
    art = cunion.build_union(Path(os.environ.get("STACK", "stacks/qa.toml")), options)
    print("built", art.adapter, art.steps, art.train_loss, art.val_loss, flush=True)


if __name__ == "__main__":
    main()
