"""Which input tokens made the model predict its target: integrated gradients and gradient x
input on the token embeddings, computed with captum.

The attributed quantity f is the log-probability of the target tokens given the prompt
(teacher-forced for a target of several tokens). The integrated-gradients baseline keeps <bos>
and the target's own tokens, and puts the `<|pad|>` embedding at every prompt position: "the
same sequence with the prompt's content removed". The path integral uses Gauss-Legendre
quadrature with `n_steps` points. Completeness (Sundararajan et al. 2017): the attributions
sum to f(input) - f(baseline); we report the relative error and, if it is above the
tolerance, double the steps (up to `max_steps`) and say how many were used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from candorlm.explain.tokens import Example

TOLERANCE = 0.05


@dataclass
class Attribution:
    method: str
    scores: list[float]  # one per input token (<bos> and target tokens included, at 0 for IG)
    f_input: float
    f_baseline: float | None = None
    n_steps: int | None = None
    completeness_error: float | None = None  # |sum - (f(x) - f(b))| / |f(x) - f(b)|

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def target_log_prob(model: nn.Module, ids: torch.Tensor, example: Example) -> torch.Tensor:
    """f for a batch of input ids (B, T): log p(target tokens | prompt), shape (B,)."""
    logits = model(ids).float()
    pos = torch.tensor(example.target_positions, device=ids.device)
    tgt = torch.tensor(example.target_ids, device=ids.device)
    logp = torch.log_softmax(logits[:, pos], dim=-1)  # (B, n_target, V)
    return logp.gather(-1, tgt.expand(ids.shape[0], -1)[..., None])[..., 0].sum(-1)


def _embedding(model: nn.Module) -> nn.Module:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else getattr(model, "tok_emb", None)
    if emb is None:
        raise TypeError(f"{type(model).__name__} has no token embedding (tok_emb) to attribute to")
    return emb


def baseline_ids(example: Example, pad_id: int, keep_first: bool) -> list[int]:
    ids = list(example.ids)
    for i in range(1 if keep_first else 0, example.n_prompt):
        ids[i] = pad_id
    return ids


def integrated_gradients(model: nn.Module, example: Example, pad_id: int, has_bos: bool = True,
                         n_steps: int = 32, max_steps: int = 512, tolerance: float = TOLERANCE) -> Attribution:
    from captum.attr import LayerIntegratedGradients

    device = next(model.parameters()).device
    ids = torch.tensor([example.ids], device=device)
    base = torch.tensor([baseline_ids(example, pad_id, has_bos)], device=device)
    lig = LayerIntegratedGradients(lambda x: target_log_prob(model, x, example), _embedding(model))
    with torch.no_grad():
        fx, fb = (float(target_log_prob(model, x, example)) for x in (ids, base))
    while True:
        attr = lig.attribute(ids, baselines=base, n_steps=n_steps, method="gausslegendre",
                             internal_batch_size=max(1, 8192 // max(1, len(example.ids))))
        scores = attr.sum(-1)[0].detach().float().cpu()
        diff = fx - fb
        error = abs(float(scores.sum()) - diff) / max(abs(diff), 1e-12)
        if error < tolerance or n_steps >= max_steps:
            break
        n_steps *= 2
    return Attribution("integrated_gradients", [round(float(s), 6) for s in scores], fx, fb, n_steps, error)


def gradient_x_input(model: nn.Module, example: Example) -> Attribution:
    """(df/d embedding) . embedding, summed over the embedding dimensions, per token."""
    from captum.attr import LayerGradientXActivation

    device = next(model.parameters()).device
    ids = torch.tensor([example.ids], device=device)
    gxa = LayerGradientXActivation(lambda x: target_log_prob(model, x, example), _embedding(model))
    scores = gxa.attribute(ids).sum(-1)[0].detach().float().cpu()
    with torch.no_grad():
        fx = float(target_log_prob(model, ids, example))
    return Attribution("gradient_x_input", [round(float(s), 6) for s in scores], fx)
