"""Which input tokens made the model predict its target: integrated gradients and gradient x
input on the token embeddings, computed with captum (`IntegratedGradients`, `InputXGradient`)
on a function of the embeddings, which the model reads through its embedding hook point.

The attributed quantity f is the log-probability of the target tokens given the prompt
(teacher-forced for a target of several tokens; an encoder's target at its masked positions; an
encoder-decoder's given the source). The input attributed to is the decoder's or encoder's
sequence, or an encoder-decoder's source. The integrated-gradients baseline keeps `<bos>`, the
target's own tokens, an encoder's <|mask|> tokens and a source's <eos>, and puts the `<|pad|>`
embedding at every other prompt position: "the same input with the prompt's content removed".
The path integral uses Gauss-Legendre quadrature with `n_steps` points. Completeness
(Sundararajan et al. 2017): the attributions sum to f(input) - f(baseline); we report the
relative error and, if it is above the tolerance, double the steps (up to `max_steps`) and say
how many were used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from candorlm.explain.subject import embed_point, model_inputs
from candorlm.explain.tokens import Example
from candorlm.model.hooks import hooks, run_with_cache

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
    """f for a batch of varied inputs `ids` (B, T): log p(target tokens | prompt), shape (B,)."""
    logits = model(*model_inputs(ids, example)).float()
    pos = torch.tensor(example.target_positions, device=ids.device)
    tgt = torch.tensor(example.target_ids, device=ids.device)
    logp = torch.log_softmax(logits[:, pos], dim=-1)  # (B, n_target, V)
    return logp.gather(-1, tgt.expand(ids.shape[0], -1)[..., None])[..., 0].sum(-1)


def baseline_ids(example: Example, pad_id: int, keep_first: bool = True) -> list[int]:
    """The input with `pad_id` at every content position of the prompt (see Example.frame).
    keep_first=False also blanks a leading `<bos>`."""
    ids = list(example.ids)
    content = example.content_positions
    if not keep_first and 0 in example.frame:
        content = [0] + content
    for i in content:
        ids[i] = pad_id
    return ids


def embeddings(model: nn.Module, ids: torch.Tensor, example: Example) -> torch.Tensor:
    """The token embeddings (B, T, C) of the varied input, read at its embedding hook point."""
    _, cache = run_with_cache(model, *model_inputs(ids, example), names=embed_point(example))
    return cache[embed_point(example)]


def _f_of_embeddings(model: nn.Module, ids: torch.Tensor, example: Example):  # noqa: ANN202
    """f as a function of the input's embeddings (B, T, C): the model runs on `ids` with its
    embedding hook point's output replaced, so attributions reach any architecture's input
    (an encoder-decoder's source included), whatever module computes the embedding."""
    point = embed_point(example)

    def f(emb: torch.Tensor) -> torch.Tensor:
        with hooks(model, {point: lambda x, hook: emb}):
            return target_log_prob(model, ids.expand(emb.shape[0], -1), example)

    return f


def integrated_gradients(model: nn.Module, example: Example, pad_id: int, has_bos: bool = True,
                         n_steps: int = 32, max_steps: int = 512, tolerance: float = TOLERANCE) -> Attribution:
    from captum.attr import IntegratedGradients

    device = next(model.parameters()).device
    ids = torch.tensor([example.ids], device=device)
    base = torch.tensor([baseline_ids(example, pad_id, has_bos)], device=device)
    with torch.no_grad():
        fx, fb = (float(target_log_prob(model, x, example)) for x in (ids, base))
        emb_x, emb_b = embeddings(model, ids, example), embeddings(model, base, example)
    ig = IntegratedGradients(_f_of_embeddings(model, ids, example))
    while True:
        attr = ig.attribute(emb_x, baselines=emb_b, n_steps=n_steps, method="gausslegendre",
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
    from captum.attr import InputXGradient

    device = next(model.parameters()).device
    ids = torch.tensor([example.ids], device=device)
    with torch.no_grad():
        emb = embeddings(model, ids, example)
        fx = float(target_log_prob(model, ids, example))
    emb.requires_grad_(True)
    scores = InputXGradient(_f_of_embeddings(model, ids, example)).attribute(emb).sum(-1)[0].detach().float().cpu()
    return Attribution("gradient_x_input", [round(float(s), 6) for s in scores], fx)
