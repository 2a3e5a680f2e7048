"""The context probe: windows longer than the training length (rotary-embedding extrapolation).

The in-domain documents are laid end to end as the shards lay them (`<|bos|> ... <|eos|>`), and
the same stream is cut into windows of 1x, 2x and 4x the training sequence length. Each row
gives bits-per-byte over its windows, and separately over positions inside the trained length
(0 .. S-1) and beyond it (S .. L-1): a model whose positions extrapolate scores the later
positions no worse than the earlier ones (they have more context); one that does not, worse.
Bytes per token are the tokens' UTF-8 lengths (special tokens count none, as in `evaluate_bpb`).
Intervals resample windows.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from torch import nn

from candorlm.generalization.bootstrap import LEVEL, RESAMPLES
from candorlm.generalization.scoring import LN2, encode_documents, token_nats, with_context
from candorlm.tokenizer import Tokenizer


def _bpb_interval(nats: np.ndarray, nbytes: np.ndarray, seed: int) -> list[float] | None:
    if len(nats) < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(nats), size=(RESAMPLES, len(nats)))
    samples = nats[picks].sum(1) / LN2 / np.maximum(nbytes[picks].sum(1), 1)
    lo, hi = np.percentile(samples, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return [round(float(lo), 4), round(float(hi), 4)]


def _bpb(nats: np.ndarray, nbytes: np.ndarray) -> float | None:
    return round(float(nats.sum() / LN2 / nbytes.sum()), 4) if nbytes.sum() > 0 else None


def context_probe(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], train_len: int, *,
                  factors: Sequence[int] = (1, 2, 4), max_tokens: int = 32768, batch_size: int = 8,
                  precision: str = "fp32", seed: int = 0) -> list[dict[str, Any]]:
    """One row per window length: bpb overall, within and beyond the trained length."""
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in encode_documents(tokenizer, texts)])
    stream = stream[:max_tokens + 1]
    byte_len = tokenizer.token_byte_lengths().astype(np.float64)
    rows = []
    for factor in factors:
        length = train_len * factor
        n = (len(stream) - 1) // length
        if n < 1:
            rows.append({"name": f"context-{factor}x", "context": length, "windows": 0,
                         "note": f"the in-domain set has fewer than {length + 1} tokens"})
            continue
        windows = [stream[i * length:i * length + length + 1].tolist() for i in range(n)]
        longer = with_context(model, length)
        nats = np.stack(token_nats(longer, windows, batch_size=max(1, batch_size // factor), precision=precision))
        targets = np.stack([np.asarray(w[1:]) for w in windows])
        nbytes = byte_len[targets]
        text = nbytes > 0
        nats_text = np.where(text, nats, 0.0)
        inside, beyond = slice(0, train_len), slice(train_len, length)
        row: dict[str, Any] = {
            "name": f"context-{factor}x", "context": length, "windows": n, "tokens": int(targets.size),
            "bpb": _bpb(nats_text, nbytes), "ci": _bpb_interval(nats_text.sum(1), nbytes.sum(1), seed),
            "bpb_within_train_length": _bpb(nats_text[:, inside], nbytes[:, inside]),
            "bpb_beyond_train_length": _bpb(nats_text[:, beyond], nbytes[:, beyond]) if factor > 1 else None,
        }
        if factor > 1:
            row["ci_beyond_train_length"] = _bpb_interval(nats_text[:, beyond].sum(1), nbytes[:, beyond].sum(1), seed)
        rows.append(row)
    return rows
