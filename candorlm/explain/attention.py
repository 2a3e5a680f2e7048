"""Attention maps per layer and head, and head summaries: which heads look at the previous
token, at the first token, or do induction ([A][B] ... [A] -> attend to [B]).

Scores are mean attention weights, between 0 and 1:
- previous-token score: mean over positions t >= 1 of pattern[t, t-1];
- first-token score: mean over positions t >= 1 of pattern[t, 0];
- induction score: on sequences <bos> r_1..r_n r_1..r_n of random tokens, the mean over the
  second half of the weight from r_i's second occurrence onto r_{i+1}'s first occurrence
  (Olsson et al. 2022). Random tokens carry no meaning, so only an induction mechanism can
  score high.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from candorlm.model.hooks import run_with_cache

PATTERN = "blocks.*.attn.hook_pattern"
THRESHOLD = 0.5  # a head whose score is above this is named in the summary


@torch.no_grad()
def attention_patterns(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Attention weights (layer, batch, head, query, key) for input ids (batch, T)."""
    _, cache = run_with_cache(model, ids, names=PATTERN)
    return cache.stack("attn.hook_pattern").float()


def previous_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """(layer, head) from patterns (layer, batch, head, T, T); T must be at least 2."""
    T = patterns.shape[-1]
    t = torch.arange(1, T)
    return patterns[..., t, t - 1].mean(dim=(1, 3))


def first_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    T = patterns.shape[-1]
    return patterns[..., torch.arange(1, T), 0].mean(dim=(1, 3))


def repeated_random_tokens(n: int, batch: int, vocab: list[int], bos: int | None, seed: int = 0) -> torch.Tensor:
    """(batch, [1 +] 2n): [<bos>] r_1..r_n r_1..r_n, tokens drawn uniformly from `vocab`."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(vocab)
    half = pool[torch.randint(len(pool), (batch, n), generator=g)]
    seq = torch.cat([half, half], dim=1)
    if bos is not None:
        seq = torch.cat([torch.full((batch, 1), bos), seq], dim=1)
    return seq


def induction_scores_from(patterns: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    """(layer, head) from patterns of repeated sequences with `offset` leading tokens (<bos>)."""
    q = torch.arange(offset + n, offset + 2 * n)  # second occurrences
    return patterns[..., q, q - n + 1].mean(dim=(1, 3))


@torch.no_grad()
def induction_scores(model: nn.Module, vocab: list[int], bos: int | None, n: int = 20, batch: int = 8,
                     seed: int = 0) -> torch.Tensor:
    """(layer, head) induction scores on `batch` repeated random sequences of length n."""
    device = next(model.parameters()).device
    ids = repeated_random_tokens(n, batch, vocab, bos, seed).to(device)
    return induction_scores_from(attention_patterns(model, ids), n, int(bos is not None))


@dataclass
class HeadSummary:
    previous_token: np.ndarray  # (layer, head)
    first_token: np.ndarray
    induction: np.ndarray

    def named(self, threshold: float = THRESHOLD) -> dict[str, list[dict[str, float | int]]]:
        """Heads scoring above the threshold, best first, per kind."""
        out = {}
        for kind in ("previous_token", "first_token", "induction"):
            scores = getattr(self, kind)
            heads = [{"layer": int(layer), "head": int(head), "score": round(float(scores[layer, head]), 4)}
                     for layer, head in zip(*np.nonzero(scores > threshold))]
            out[kind] = sorted(heads, key=lambda h: -h["score"])
        return out

    def to_json(self) -> dict:
        return {"threshold": THRESHOLD,
                "scores": {k: np.round(getattr(self, k), 4).tolist()
                           for k in ("previous_token", "first_token", "induction")},
                "heads": self.named()}


def head_summary(model: nn.Module, ids: torch.Tensor, vocab: list[int], bos: int | None,
                 seed: int = 0) -> HeadSummary:
    """Previous- and first-token scores on the prompt `ids` (1, T), induction scores on random
    repeated sequences drawn from `vocab`."""
    patterns = attention_patterns(model, ids)
    n = min(20, (model.cfg.max_seq_len - 1) // 2) if hasattr(model, "cfg") else 20
    return HeadSummary(previous_token_scores(patterns).cpu().numpy(), first_token_scores(patterns).cpu().numpy(),
                       induction_scores(model, vocab, bos, n=n, seed=seed).cpu().numpy())
