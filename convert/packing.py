"""Sequence packing: examples laid end to end in rows, each example with its
own positions (0, 1, ...), so transformers builds a block-diagonal causal mask
(packed-sequence detection from ``position_ids``) and no compute is spent on
padding beyond a row's tail. The plan is a pure function of (seed, epoch), so a
resumed run rebuilds exactly the batches it would have seen."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .data import Example

IGNORE = -100


def pack_rows(lengths: Sequence[int], row_len: int, order: Sequence[int]) -> list[list[int]]:
    """First-fit decreasing: example indices grouped in rows of <= row_len tokens."""
    rows: list[list[int]] = []
    space: list[int] = []
    for index in sorted(order, key=lambda i: -lengths[i]):
        for r, free in enumerate(space):
            if lengths[index] <= free:
                rows[r].append(index)
                space[r] -= lengths[index]
                break
        else:
            rows.append([index])
            space.append(row_len - lengths[index])
    return rows


def epoch_batches(examples: Sequence[Example], row_len: int, rows_per_batch: int, seed: int, epoch: int
                  ) -> list[list[list[int]]]:
    """The batches of one epoch: lists of rows of example indices."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(examples)))
    rng.shuffle(order)
    rows = pack_rows([len(e.ids) for e in examples], row_len, order)
    rng.shuffle(rows)
    return [rows[i : i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def collate(examples: Sequence[Example], rows: list[list[int]], pad_id: int):
    """input_ids, position_ids and labels (loss on targets only) for packed rows."""
    import torch

    seqs = []
    for row in rows:
        ids, pos, labels = [], [], []
        for index in row:
            ex = examples[index]
            ids.extend(ex.ids)
            pos.extend(range(len(ex.ids)))
            labels.extend([IGNORE] * ex.n_prompt + list(ex.ids[ex.n_prompt :]))
        seqs.append((ids, pos, labels))
    width = max(len(s[0]) for s in seqs)
    batch_ids, batch_pos, batch_labels = [], [], []
    for ids, pos, labels in seqs:
        pad = width - len(ids)
        batch_ids.append(ids + [pad_id] * pad)
        batch_pos.append(pos + list(range(pad)))  # the tail is its own (ignored) segment
        batch_labels.append(labels + [IGNORE] * pad)
    return {
        "input_ids": torch.tensor(batch_ids), "position_ids": torch.tensor(batch_pos),
        "labels": torch.tensor(batch_labels),
    }


def padded_batches(examples: Sequence[Example], batch_size: int, seed: int) -> list[list[int]]:
    """The plain baseline: random batches of examples, one per row (benchmarks)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate_padded(examples: Sequence[Example], indices: list[int], pad_id: int):
    import torch

    width = max(len(examples[i].ids) for i in indices)
    ids, mask, labels = [], [], []
    for i in indices:
        ex = examples[i]
        pad = width - len(ex.ids)
        ids.append(list(ex.ids) + [pad_id] * pad)
        mask.append([1] * len(ex.ids) + [0] * pad)
        labels.append([IGNORE] * ex.n_prompt + list(ex.ids[ex.n_prompt :]) + [IGNORE] * pad)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
