"""Batches for training: a deterministic, length-grouped order per epoch, and right-padded tensors."""

from __future__ import annotations

import random
from collections.abc import Sequence

from tunery.text.chat_template import IGNORE_INDEX, Rendered

GROUP_WINDOW = 32  # batches whose examples are sorted by length together (less padding, still shuffled)


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices for each step of one epoch. Shuffled, then sorted by length inside windows of
    GROUP_WINDOW batches so a batch pads little, then the batches are shuffled. A pure function of
    (lengths, batch_size, seed, epoch), so a resumed run replays exactly the same order."""
    rng = random.Random(seed * 1_000_003 + epoch)
    perm = list(range(len(lengths)))
    rng.shuffle(perm)
    window = batch_size * GROUP_WINDOW
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: Sequence[Rendered], pad_id: int):
    """(input_ids, labels) as [batch, longest] LongTensors, right-padded. No attention mask is needed: attention
    is causal, so real tokens never see the padding after them, and padded positions carry no label."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
    return ids, labels


# A batch runs whole when sharing would save fewer tokens: a prefix of 2 (14 tokens saved at batch 8) measured the
# same step time as none, so packing costs nothing visible; it just is not worth the extra path (docs/training.md).
SHARED_PREFIX_MIN_TOKENS = 16


def shared_prefix(ids, labels) -> int:
    """How many leading tokens every row of a right-padded batch has in common and predicts nothing from, so they
    can run once for the whole batch (a system prompt, a shared instruction); 0 when sharing would save fewer than
    SHARED_PREFIX_MIN_TOKENS tokens. Position i predicts labels[:, i + 1]."""
    rows, width = ids.shape
    if rows < 2 or width < 2:
        return 0
    shareable = (ids[:, :-1] == ids[:1, :-1]).all(0) & (labels[:, 1:] == IGNORE_INDEX).all(0)
    length = int(shareable.long().cumprod(0).sum())
    return length if (rows - 1) * length >= SHARED_PREFIX_MIN_TOKENS else 0
