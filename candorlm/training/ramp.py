"""Batch-size and sequence-length warmup: smaller batches, or shorter windows, early in a run.

Early in training the gradient is large and consistent, so a small batch points the same way
as a large one at a fraction of its cost: more, cheaper optimizer steps in the first minutes
(GPT-3's batch-size ramp; the sequence-length warmup of Li et al. 2022, in modded-nanoGPT too).
Both grow linearly from `RAMP_START` of the configured size to all of it over a share of the
run (`train.batch_warmup`, `train.seq_warmup`); the share is of the run's time with a time
budget, else of its steps.

Shorter windows are cut from whole training windows (a 256-token window gives two of 128), so
no token is skipped; the rows per step stay the batch size, so a step holds fewer tokens.
"""

from __future__ import annotations

import torch

from candorlm.shards import BatchSampler

RAMP_START = 0.25  # the share of the batch (or window) a ramp starts from
SEQ_MULTIPLE = 8  # ramped windows are a multiple of this many tokens (fewer distinct shapes)


def ramp(progress: float, share: float) -> float:
    """The share of the full size at `progress` (0..1 of the run): 1 when `share` is 0 (no ramp)."""
    if share <= 0:
        return 1.0
    return min(1.0, RAMP_START + (1.0 - RAMP_START) * max(0.0, progress) / share)


def batch_shape(batch_size: int, seq_len: int, progress: float, batch_warmup: float,
                seq_warmup: float) -> tuple[int, int]:
    """(rows, tokens per row) of the batch at `progress` of the run."""
    rows = max(1, round(batch_size * ramp(progress, batch_warmup)))
    length = seq_len
    if seq_warmup > 0:
        length = max(min(seq_len, SEQ_MULTIPLE), round(seq_len * ramp(progress, seq_warmup)) // SEQ_MULTIPLE * SEQ_MULTIPLE)
    return rows, min(length, seq_len)


def ramped_batch(sampler: BatchSampler, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` windows of `length` tokens (inputs, targets), cut from the sampler's whole windows."""
    seq_len = sampler.windows.seq_len
    if length >= seq_len:
        return sampler.next_batch(rows)
    per = seq_len // length  # pieces per whole window
    x, y = sampler.next_batch(-(-rows // per))
    cut = per * length
    return x[:, :cut].reshape(-1, length)[:rows], y[:, :cut].reshape(-1, length)[:rows]
