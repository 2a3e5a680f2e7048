"""Evaluation: loss and bits-per-byte on held-out text, and n-gram baselines to compare against.

Bits-per-byte (bpb) is the model's total surprise, in bits, divided by the UTF-8 bytes of the
text it predicted. Loss per token depends on the tokenizer (a 32k vocabulary has fewer, harder
tokens than a character vocabulary); bpb does not, so runs with different tokenizers, and
character n-gram baselines, are compared on one scale. Targets that are special tokens
(document boundaries) stand for no bytes and are left out of both sums.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from candorlm.device import autocast
from candorlm.model.loss import lm_loss
from candorlm.shards import WindowIndex

LN2 = math.log(2)


def eval_window_count(n_windows: int, seq_len: int, max_tokens: int) -> int:
    """How many of a split's `n_windows` one evaluation reads: all, or `max_tokens` worth (at least one)."""
    return min(n_windows, max(1, max_tokens // seq_len)) if max_tokens else n_windows


@torch.no_grad()
def evaluate_bpb(model: nn.Module, windows: WindowIndex, token_bytes: np.ndarray, *, batch_size: int = 16,
                 max_tokens: int = 0, precision: str = "fp32",
                 make_batch: Callable[[torch.Tensor, torch.Tensor, int], tuple[dict, torch.Tensor]] | None = None,
                 ) -> dict[str, float]:
    """Mean loss per token and bits-per-byte over the first windows of a split (all when max_tokens=0).

    `make_batch(x, y, index)` turns windows into the model's inputs and targets for objectives
    other than next-token prediction (masked LM, denoising); targets of -100 are not scored, and
    bits-per-byte is then over the scored tokens only (for a masked LM: bits per byte of the
    masked tokens, given both sides, which is not comparable to a causal model's)."""
    device = next(model.parameters()).device
    n_windows = eval_window_count(len(windows), windows.seq_len, max_tokens)
    nbytes = torch.as_tensor(token_bytes, dtype=torch.float64, device=device)
    total_nats = total_tokens = total_bytes = 0.0
    bytes_nats = 0.0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n_windows, batch_size):
            x, y = windows.get(range(start, min(start + batch_size, n_windows)))
            inputs, y = make_batch(x, y, start // batch_size) if make_batch else ({"input_ids": x}, y)
            inputs, y = {k: v.to(device) for k, v in inputs.items()}, y.to(device)
            with autocast(precision, device):
                if make_batch is None:  # next-token scoring: chunked, no (B, T, vocab) logits
                    nats = model(**inputs, targets=y, reduction="none").double().reshape(-1)
                else:
                    nats = lm_loss(model(**inputs), y, reduction="none").double()
            scored = y.reshape(-1) != -100
            target_bytes = nbytes[y.reshape(-1).clamp(min=0)] * scored
            total_nats += float(nats.sum())
            total_tokens += int(scored.sum())
            bytes_nats += float((nats * (target_bytes > 0)).sum())
            total_bytes += float(target_bytes.sum())
    finally:
        model.train(was_training)
    return {
        "loss": total_nats / max(total_tokens, 1),
        "bpb": bytes_nats / LN2 / max(total_bytes, 1),
        "tokens": int(total_tokens),
        "bytes": int(total_bytes),
    }


def char_ngram_bpb(train_texts: Iterable[str], eval_texts: Iterable[str], order: int) -> float:
    """Bits-per-byte of a character unigram (order 1) or bigram (order 2) model.

    Unigram: add-one smoothing over the training characters plus one slot for unseen ones.
    Bigram: Witten-Bell interpolation with that unigram (a standard, parameter-free smoothing).
    Each document starts from a boundary symbol, as the transformer starts from <|bos|>.
    """
    if order not in (1, 2):
        raise ValueError("order must be 1 or 2")
    boundary = "\x00"
    uni: Counter[str] = Counter()
    bi: dict[str, Counter[str]] = defaultdict(Counter)
    for text in train_texts:
        uni.update(text)
        prev = boundary
        for ch in text:
            bi[prev][ch] += 1
            prev = ch
    vocab = len(uni) + 1
    total = sum(uni.values())

    def p_uni(ch: str) -> float:
        return (uni.get(ch, 0) + 1) / (total + vocab)

    follow_total = {prev: sum(c.values()) for prev, c in bi.items()}
    follow_types = {prev: len(c) for prev, c in bi.items()}
    bits = 0.0
    nbytes = 0
    for text in eval_texts:
        prev = boundary
        for ch in text:
            p = p_uni(ch)
            if order == 2 and prev in bi:
                n, t = follow_total[prev], follow_types[prev]
                p = (bi[prev].get(ch, 0) + t * p) / (n + t)
            bits -= math.log2(p)
            nbytes += len(ch.encode("utf-8"))
            prev = ch
    return bits / max(nbytes, 1)
