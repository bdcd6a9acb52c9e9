"""Soft packing: whole samples packed into rows of up to max_length tokens, never split.

Per epoch the sample order is shuffled with (seed, epoch), cut into windows, and each window is packed
first-fit-decreasing (FFD); the window's rows are then shuffled so long samples do not cluster. The
plan is a pure function of (lengths, max_length, window, seed, epoch): every rank and every resumed run
computes the same rows. Arrival-order packing (`pack_arrival`, next-fit) is kept for comparison: it
leaves rows badly filled (76% on realistic caption lengths). Without packing (`method="single"`, for an LLM
whose attention does not isolate packed samples) each row is one sample; samples of similar length are
grouped into the same micro-batch, as transformers' `group_by_length` does, to keep padding low.

A collated row restarts `position_ids` at 0 for every sample; with no attention mask transformers
turns that into a per-sample (block-diagonal causal) mask, or cu_seqlens for flash-attn's varlen kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from training_jobs.chat import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def pack_ffd(lengths: Sequence[int], max_length: int, items: Sequence[int] | None = None) -> list[list[int]]:
    """First-fit decreasing over `items` (indices into lengths); a longer-than-max item gets its own row."""
    items = list(range(len(lengths))) if items is None else list(items)
    items.sort(key=lambda i: (-lengths[i], i))
    capacity = np.empty(0, dtype=np.int64)
    rows: list[list[int]] = []
    for i in items:
        fits = np.flatnonzero(capacity >= lengths[i])
        if fits.size:
            b = int(fits[0])
            capacity[b] -= lengths[i]
            rows[b].append(i)
        else:
            capacity = np.append(capacity, max(max_length - lengths[i], 0))
            rows.append([i])
    return rows


def pack_arrival(
    lengths: Sequence[int], max_length: int, items: Sequence[int] | None = None
) -> list[list[int]]:
    """Next-fit in arrival order: close the row as soon as the next sample does not fit."""
    items = list(range(len(lengths))) if items is None else list(items)
    rows: list[list[int]] = []
    used = max_length + 1
    for i in items:
        if used + lengths[i] > max_length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += lengths[i]
    return rows


def plan_epoch(
    lengths: Sequence[int],
    max_length: int,
    seed: int,
    epoch: int,
    window: int = 4096,
    method: str = "ffd",
    group: int = 1,
) -> list[list[int]]:
    """Rows of sample indices for one epoch; deterministic for (seed, epoch).

    method: "ffd" (soft packing), "arrival" (next-fit, for comparison) or "single" (no packing; runs of
    `group` rows, the micro-batch, stay together when the rows are shuffled).
    """
    if method not in ("ffd", "arrival", "single"):
        raise ValueError(f"unknown packing method {method!r}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        items = order[start : start + window]
        if method == "single":
            single = [[i] for i in sorted(items, key=lambda i: (-lengths[i], i))]  # similar lengths together
            blocks = [single[k : k + group] for k in range(0, len(single), group)]
            rows.extend(r for j in rng.permutation(len(blocks)) for r in blocks[j])
            continue
        chunk = (pack_ffd if method == "ffd" else pack_arrival)(lengths, max_length, items)
        rows.extend(chunk[j] for j in rng.permutation(len(chunk)))
    return rows


def fill_ratio(rows: Sequence[Sequence[int]], lengths: Sequence[int], max_length: int) -> float:
    """Real tokens / (rows x max_length)."""
    return sum(lengths[i] for row in rows for i in row) / max(len(rows) * max_length, 1)


def collate(
    rows: Sequence[Sequence],
    pad_id: int,
    pixels=None,
    flatten: bool = False,
    sqrt_weights: bool = False,
    pad_to: int | None = None,
) -> dict[str, torch.Tensor | list]:
    """Rows of `Sample`s -> tensors. Rows are right-padded to the longest row with a padding 'sample'
    (positions from 0, no labels); `flatten` concatenates the rows into one (flash-attn varlen wants batch 1).
    `pad_to` pads to at least that width (a static shape for compiled kernels).

    pixels(sample) -> (3, H, W) for samples with an image, in token order (model.embed relies on it).
    """
    if flatten:
        rows = [[s for row in rows for s in row]]
    seqs = []
    for row in rows:
        ids, labels, pos, weights, doc = [], [], [], [], []
        for d, s in enumerate(row):
            n = len(s.input_ids)
            ids += s.input_ids
            labels += s.labels
            pos += range(n)
            supervised = sum(1 for x in s.labels if x != IGNORE_INDEX)
            w = 1.0 / max(supervised, 1) ** 0.5 if sqrt_weights else 1.0
            weights += [w] * n
            doc += [d] * n
        seqs.append((ids, labels, pos, weights, doc))
    width = max(max(len(s[0]) for s in seqs), pad_to or 0)
    batch = {k: [] for k in ("input_ids", "labels", "position_ids", "loss_weights", "doc_ids")}
    for ids, labels, pos, weights, doc in seqs:
        pad = width - len(ids)
        batch["input_ids"].append(ids + [pad_id] * pad)
        batch["labels"].append(labels + [IGNORE_INDEX] * pad)
        batch["position_ids"].append(pos + list(range(pad)))
        batch["loss_weights"].append(weights + [0.0] * pad)
        batch["doc_ids"].append(doc + [-1] * pad)
    out: dict = {
        k: torch.tensor(v, dtype=torch.float32 if k == "loss_weights" else torch.long)
        for k, v in batch.items()
    }
    seq_lens = [len(s.input_ids) for row in rows for s in row]
    out["seq_lens"] = seq_lens
    out["cu_seqlens"] = torch.tensor(
        np.concatenate([[0], np.cumsum(seq_lens)]), dtype=torch.int32
    )  # flatten only
    out["n_real_tokens"] = sum(seq_lens)
    out["n_images"] = sum(1 for row in rows for s in row if IMAGE_TOKEN_INDEX in s.input_ids)
    if pixels is not None:
        imgs = [pixels(s) for row in rows for s in row if s.image is not None]
        out["pixel_values"] = torch.stack(imgs) if imgs else None
    return out
