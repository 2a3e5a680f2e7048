"""The logit lens (nostalgebraist 2020): decode the residual stream after every layer with the
model's own final norm and unembedding, as if the model stopped there. Row 0 is the token
embeddings; the last row equals the model's real output.

A decoder's row predicts the next token at each position; an encoder's (masked LM) predicts
the token at each position itself (the target at a <|mask|>); an encoder-decoder's lens reads
the decoder's stream (its encoder has no output layer), each position predicting the next
target token given the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from candorlm.errors import CandorError
from candorlm.model.hooks import run_with_cache


@dataclass
class Lens:
    layers: list[str]  # "embed", "block 0", ..., one per row
    top_ids: torch.Tensor  # (rows, T, k)
    top_probs: torch.Tensor  # (rows, T, k)
    next_prob: torch.Tensor  # (rows, T): probability of the token that comes next (nan where unknown)
    target_prob: torch.Tensor | None  # (rows, T): probability of one chosen token at every position


def residual_stream(model: nn.Module, ids: torch.Tensor, *extra: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """(rows, B, T, C): the embeddings, then the residual stream after each block, of
    `model(ids, *extra)` (extra: an encoder-decoder's decoder input); prefix "encoder." reads
    an encoder-decoder's encoder."""
    _, cache = run_with_cache(model, ids, *extra, names=[f"{prefix}hook_embed", f"{prefix}blocks.*.hook_resid_post"])
    return torch.cat([cache[f"{prefix}hook_embed"][None], cache.stack("hook_resid_post", prefix)])


def unembed(model: nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """Logits from a residual stream through the model's final norm and output layer."""
    if not (hasattr(model, "norm") and hasattr(model, "lm_head")):
        raise CandorError(f"{type(model).__name__} has no final `norm` and `lm_head`: the logit lens needs them")
    return model.lm_head(model.norm(resid))


@torch.no_grad()
def logit_lens(model: nn.Module, ids: torch.Tensor, k: int = 5, next_ids: list[int] | None = None,
               target_id: int | None = None, extra: tuple[torch.Tensor, ...] = ()) -> Lens:
    """Top-k predictions read off every layer at every position of one sequence `ids` (1, T)
    (with `extra` = (decoder input,) for an encoder-decoder: its decoder's positions).

    next_ids: the token each position predicts (default: the following input token, and
    nothing after the last); target_id: one token whose probability is read everywhere."""
    resid = residual_stream(model, ids, *extra)[:, 0]  # (rows, T, C)
    probs = torch.softmax(unembed(model, resid).float(), dim=-1).cpu()  # (rows, T, V)
    top_probs, top_ids = probs.topk(k, dim=-1)
    rows, T = probs.shape[:2]
    following = list(next_ids) if next_ids is not None else ids[0, 1:].tolist()
    next_prob = torch.full((rows, T), float("nan"))
    n = min(T, len(following))
    next_prob[:, :n] = probs[:, torch.arange(n), torch.tensor(following[:n], dtype=torch.long)]
    target = probs[..., target_id] if target_id is not None else None
    names = ["embed"] + [f"block {i}" for i in range(rows - 1)]
    return Lens(names, top_ids, top_probs, next_prob, target)
