"""PEFT LoRA training of one stage on packed sequences, with checkpoints that
resume exactly (weights, optimizer, scheduler, RNG and data position).

The loss is computed only where it counts: hidden states of the positions
that predict a target token go through the LM head (no vocabulary-sized
logits for prompt or padding positions).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fslm_edge.errors import InputError
from fslm_edge.fileio import atomic_folder, atomic_path, fingerprint
from fslm_edge.recipe import TrainRecipe

from .data import StageData
from .packing import IGNORE, collate, epoch_batches

CHECKPOINT = "checkpoint.pt"
ADAPTER = "adapter"


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float | None
    val_loss: float | None
    tokens: int
    seconds: float
    resumed_from: int = 0


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def training_device(name: str):
    """``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA when torch sees a GPU) as a torch device."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: this torch sees no CUDA GPU; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a torch device; use cpu, cuda or auto") from None


def target_loss(model, batch):
    """Summed cross-entropy over target tokens, and their count."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    batch = {key: value.to(inner.device) for key, value in batch.items()}
    hidden = inner.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         attention_mask=batch.get("attention_mask"), use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logits = inner.lm_head(hidden[:, :-1][mask])
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[mask], reduction="sum")
    return loss, int(mask.sum())


def evaluate(model, data: StageData, recipe: TrainRecipe, pad_id: int) -> float | None:
    import torch

    if not data.val:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for rows in epoch_batches(data.val, recipe.max_seq_len, _rows_per_batch(recipe), recipe.seed, 0):
            loss, n = target_loss(model, collate(data.val, rows, pad_id))
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(1, count)


def _rows_per_batch(recipe: TrainRecipe) -> int:
    return max(1, recipe.batch_tokens // recipe.max_seq_len)


def _fingerprint(recipe: TrainRecipe, data: StageData, total_steps: int) -> str:
    return fingerprint(repr((recipe, total_steps)), *(repr((e.ids, e.n_prompt)) for e in data.train))


def _schedule(total: int) -> Callable[[int], float]:
    warmup = min(10, max(1, total // 20))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class Trainer:
    """One stage's LoRA run. ``on_step(step, loss)`` is called after each step."""

    def __init__(self, base_model, data: StageData, recipe: TrainRecipe, out_dir: Path, pad_id: int,
                 max_steps: int | None = None, progress: bool = True, on_step=None, threads: int | None = None,
                 device: str = "cpu"):
        import torch
        from peft import LoraConfig, get_peft_model

        torch.set_num_threads(threads or default_threads())
        base_model = base_model.to(training_device(device))
        self.data, self.recipe, self.out_dir, self.pad_id = data, recipe, Path(out_dir), pad_id
        self.progress, self.on_step = progress, on_step
        torch.manual_seed(recipe.seed)
        config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                            target_modules=list(recipe.target_modules), bias="none", task_type="CAUSAL_LM")
        try:
            with warnings.catch_warnings():  # peft asks transformers a deprecated property: not the user's business
                warnings.simplefilter("ignore", FutureWarning)
                self.model = get_peft_model(base_model, config)
        except ValueError as exc:
            raise InputError(f"LoRA target_modules {list(recipe.target_modules)} do not fit the model: {exc}") from None
        self.rows = _rows_per_batch(recipe)
        self.per_epoch = len(epoch_batches(data.train, recipe.max_seq_len, self.rows, recipe.seed, 0))
        self.total = max_steps or recipe.max_steps or max(1, math.ceil(recipe.epochs * self.per_epoch))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(self.total))
        self.fingerprint = _fingerprint(recipe, data, self.total)
        self.step, self.tokens, self.last_loss, self.val_loss = 0, 0, None, None

    # -- checkpoints ---------------------------------------------------------
    def _trainable_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    def save_checkpoint(self) -> Path:
        """Only tensors and plain values, so that resuming can load it with
        ``weights_only=True`` (a checkpoint file must never be able to run code)."""
        import torch

        state = {
            "fingerprint": self.fingerprint, "step": self.step, "tokens": self.tokens, "loss": self.last_loss,
            "val_loss": self.val_loss, "weights": self._trainable_state(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        path = self.out_dir / CHECKPOINT
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def load_checkpoint(self) -> bool:
        import torch

        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            return False
        unreadable = (f"checkpoint {path} is unreadable ({{}}); delete it or run without --resume")
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # torch reports a damaged or foreign file in many types
            raise InputError(unreadable.format(_first_line(exc))) from None
        if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys():
            raise InputError(unreadable.format("not a checkpoint of fslm-edge build"))
        if state["fingerprint"] != self.fingerprint:
            raise InputError(f"{path} was made with another recipe, data or step count; "
                             "rerun without --resume to start over")
        try:
            self._restore(state)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise InputError(unreadable.format(_first_line(exc))) from None
        return True

    def _restore(self, state: dict) -> None:
        import torch

        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.last_loss, self.val_loss = state["loss"], state["val_loss"]

    # -- the loop ------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        if resume:
            self.load_checkpoint()
        resumed, tokens_at_start = self.step, self.tokens
        start = time.perf_counter()
        self.model.train()
        with _progress(self.progress, self.total, self.step) as bar:
            while self.step < self.total:
                epoch, index = divmod(self.step, self.per_epoch)
                batches = epoch_batches(self.data.train, self.recipe.max_seq_len, self.rows, self.recipe.seed, epoch)
                for rows in batches[index:]:
                    self._train_step(rows)
                    rate = (self.tokens - tokens_at_start) / max(1e-9, time.perf_counter() - start)
                    bar(self.step, self.last_loss, self.val_loss, rate)
                    if self.step >= self.total:
                        break
        self.val_loss = evaluate(self.model, self.data, self.recipe, self.pad_id)
        self.save_checkpoint()
        adapter = self.save_adapter()
        return TrainResult(adapter, self.step, self.last_loss, self.val_loss, self.tokens,
                           time.perf_counter() - start, resumed)

    def _train_step(self, rows) -> None:
        batch = collate(self.data.train, rows, self.pad_id)
        loss_sum, count = target_loss(self.model, batch)
        loss = loss_sum / max(1, count)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += sum(len(self.data.train[i].ids) for row in rows for i in row)
        self.last_loss = float(loss.detach())
        if self.step % self.recipe.eval_every == 0:
            self.val_loss = evaluate(self.model, self.data, self.recipe, self.pad_id)
        if self.step % self.recipe.save_every == 0:
            self.save_checkpoint()
        if self.on_step is not None:
            self.on_step(self.step, self.last_loss)

    def save_adapter(self) -> Path:
        """The PEFT adapter folder (adapter_config.json + safetensors), renamed into place."""
        target = self.out_dir / ADAPTER
        with atomic_folder(target) as tmp:
            self.model.save_pretrained(str(tmp))
        return target


_CHECKPOINT_KEYS = frozenset({"fingerprint", "step", "tokens", "loss", "val_loss", "weights", "optimizer",
                              "scheduler", "rng"})


def _first_line(exc: BaseException) -> str:
    import pickle

    if isinstance(exc, pickle.UnpicklingError):  # what weights_only=True refuses
        return "it holds objects other than tensors and plain values, and loading those could run code"
    text = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


class _progress:
    """A rich progress bar (loss, val loss, tokens/s, ETA), or without one a
    plain log line every ``LOG_EVERY`` steps (for runs in the background)."""

    LOG_EVERY = 10

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done

    def _log_line(self, step, loss, val, rate) -> None:
        import sys

        if step % self.LOG_EVERY == 0 or step == self.total:
            print(f"train step {step}/{self.total} loss {_fmt(loss)} val {_fmt(val)} {rate:,.0f} tok/s",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        if not self.enabled:
            return self._log_line
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                             TextColumn("{task.fields[rate]} tok/s"), TimeRemainingColumn(), transient=False)
        self._bar.start()
        self._task = self._bar.add_task("train", total=self.total, completed=self.done, loss="-", val="-", rate="-")

        def update(step, loss, val, rate):
            self._bar.update(self._task, completed=step, loss=_fmt(loss), val=_fmt(val), rate=f"{rate:,.0f}")

        return update

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.stop()
