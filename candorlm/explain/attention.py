"""Attention maps per layer and head, and head summaries: which heads look at the previous
token, at the first token, or do induction (`[A][B] ... [A]` -> attend to `[B]`).

Scores are mean attention weights, between 0 and 1:
- previous-token score: mean over positions t >= 1 of pattern[t, t-1];
- first-token score: mean over positions t >= 1 of pattern[t, 0];
- induction score: on sequences `<bos>` r_1..r_n r_1..r_n of random tokens, the mean over the
  second half of the weight from r_i's second occurrence onto r_{i+1}'s first occurrence
  (Olsson et al. 2022). Random tokens carry no meaning, so only an induction mechanism can
  score high.

The scores apply to any self-attention: a decoder's, an encoder's (bidirectional: "previous"
is the token to the left, and a query may also look right), an encoder-decoder's encoder and
decoder. Cross-attention (target queries, source keys) gets maps but no such scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from candorlm.model.hooks import run_with_cache

PATTERN = "blocks.*.attn.hook_pattern"
THRESHOLD = 0.5  # a head whose score is above this is named in the summary


# An encoder-decoder's three kinds of attention: (name, hook point glob, stack prefix, suffix).
SEQ2SEQ_MAPS = (("encoder", "encoder.blocks.*.attn.hook_pattern", "encoder.", "attn.hook_pattern"),
                ("decoder", PATTERN, "", "attn.hook_pattern"),
                ("cross", "blocks.*.cross_attn.hook_pattern", "", "cross_attn.hook_pattern"))


@torch.no_grad()
def attention_patterns(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Attention weights (layer, batch, head, query, key) for input ids (batch, T) of a decoder
    or an encoder (whose weights are bidirectional: every query sees every key)."""
    _, cache = run_with_cache(model, ids, names=PATTERN)
    return cache.stack("attn.hook_pattern").float()


@torch.no_grad()
def seq2seq_patterns(model: nn.Module, source: torch.Tensor, decoder_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """An encoder-decoder's attention weights (layer, batch, head, query, key), by kind:
    'encoder' (source x source), 'decoder' (target x target, causal) and 'cross' (target
    queries x source keys)."""
    _, cache = run_with_cache(model, source, decoder_ids, names=[glob for _, glob, _, _ in SEQ2SEQ_MAPS])
    return {name: cache.stack(suffix, prefix).float() for name, _, prefix, suffix in SEQ2SEQ_MAPS}


def previous_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """(layer, head) from patterns (layer, batch, head, T, T); T must be at least 2."""
    T = patterns.shape[-1]
    t = torch.arange(1, T)
    return patterns[..., t, t - 1].mean(dim=(1, 3))


def first_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    T = patterns.shape[-1]
    return patterns[..., torch.arange(1, T), 0].mean(dim=(1, 3))


def repeated_random_tokens(n: int, batch: int, vocab: list[int], bos: int | None, seed: int = 0) -> torch.Tensor:
    """(batch, [1 +] 2n): `[<bos>]` r_1..r_n r_1..r_n, tokens drawn uniformly from `vocab`."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(vocab)
    half = pool[torch.randint(len(pool), (batch, n), generator=g)]
    seq = torch.cat([half, half], dim=1)
    if bos is not None:
        seq = torch.cat([torch.full((batch, 1), bos), seq], dim=1)
    return seq


def induction_scores_from(patterns: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    """(layer, head) from patterns of repeated sequences with `offset` leading tokens (`<bos>`)."""
    q = torch.arange(offset + n, offset + 2 * n)  # second occurrences
    return patterns[..., q, q - n + 1].mean(dim=(1, 3))


@torch.no_grad()
def induction_scores(model: nn.Module, vocab: list[int], bos: int | None, n: int = 20, batch: int = 8,
                     seed: int = 0) -> torch.Tensor:
    """(layer, head) induction scores on `batch` repeated random sequences of length n."""
    device = next(model.parameters()).device
    ids = repeated_random_tokens(n, batch, vocab, bos, seed).to(device)
    return induction_scores_from(attention_patterns(model, ids), n, int(bos is not None))


@torch.no_grad()
def seq2seq_induction_scores(model: nn.Module, source_vocab: list[int], target_vocab: list[int], bos: int,
                             n: int = 20, batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """(layer, head) induction scores of an encoder-decoder's encoder and decoder self-attention:
    repeated random sequences (`<bos>` r r) as the source and, drawn afresh, as the decoder input."""
    device = next(model.parameters()).device
    src = repeated_random_tokens(n, batch, source_vocab, bos, seed).to(device)
    dec = repeated_random_tokens(n, batch, target_vocab, bos, seed + 1).to(device)
    patterns = seq2seq_patterns(model, src, dec)
    return {kind: induction_scores_from(patterns[kind], n, 1) for kind in ("encoder", "decoder")}


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


def induction_length(model: nn.Module) -> int:
    """n of the repeated random sequences `<bos>` r_1..r_n r_1..r_n that fit the model."""
    return min(20, (model.cfg.max_seq_len - 1) // 2) if hasattr(model, "cfg") else 20


def head_summary(model: nn.Module, ids: torch.Tensor, vocab: list[int], bos: int | None,
                 seed: int = 0) -> HeadSummary:
    """Previous- and first-token scores on the prompt `ids` (1, T), induction scores on random
    repeated sequences drawn from `vocab` (a decoder or an encoder)."""
    patterns = attention_patterns(model, ids)
    return summary_of(patterns, induction_scores(model, vocab, bos, n=induction_length(model), seed=seed))


def summary_of(patterns: torch.Tensor, induction: torch.Tensor) -> HeadSummary:
    """A HeadSummary from self-attention patterns (layer, batch, head, T, T) and induction scores."""
    return HeadSummary(previous_token_scores(patterns).cpu().numpy(), first_token_scores(patterns).cpu().numpy(),
                       induction.cpu().numpy())
