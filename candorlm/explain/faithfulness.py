"""Is an attribution faithful? The deletion test: remove the k prompt tokens it ranks highest
and measure how far the target's probability falls, against removing k tokens at random
(every k-subset when there are at most `draws` of them, else `draws` random ones). An
attribution that does no better than random is reported as such.

Tokens are removed from the sequence (not masked), so what remains is an ordinary shorter
prompt; `<bos>` is never removed, nor an encoder's `<|mask|>` or an encoder-decoder's `<eos>`.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from candorlm.explain.attribution import target_log_prob
from candorlm.explain.tokens import Example


@dataclass
class Deletion:
    k: int
    p_full: float  # p(target | prompt)
    p_top_removed: float  # after removing the k highest-attributed tokens
    drop_top: float  # p_full - p_top_removed
    drop_random_mean: float
    drop_random_std: float
    draws: int
    random_at_least_as_bad: float  # share of random removals that drop p as much as the top-k (a p-value)
    removed: list[int]  # positions removed by the attribution


def _without(example: Example, positions: tuple[int, ...]) -> Example:
    return example.without(positions)


@torch.no_grad()
def _target_probs(model: nn.Module, variants: list[Example], batch_size: int = 64) -> list[float]:
    device = next(model.parameters()).device
    out: dict[int, float] = {}
    # Removing tokens before an encoder's mask moves it: batch the variants that predict at the same positions.
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, v in enumerate(variants):
        groups.setdefault(tuple(v.target_positions), []).append(k)
    for members in groups.values():
        for i in range(0, len(members), batch_size):
            chunk = members[i:i + batch_size]
            ids = torch.tensor([variants[k].ids for k in chunk], device=device)
            out.update(zip(chunk, torch.exp(target_log_prob(model, ids, variants[chunk[0]])).tolist()))
    return [out[k] for k in range(len(variants))]


def deletion_test(model: nn.Module, example: Example, scores: list[float], k: int, has_bos: bool = True,
                  draws: int = 200, seed: int = 0) -> Deletion | None:
    """Deletion test for one example; None when the prompt has no more than k removable tokens.
    Removable: the prompt's content positions (never `<bos>`, an encoder's `<|mask|>`, a source's `<eos>`)."""
    first = 1 if has_bos else 0
    candidates = [i for i in example.content_positions if i >= first]
    if len(candidates) <= k:
        return None
    top = tuple(sorted(sorted(candidates, key=lambda i: -scores[i])[:k]))
    if math.comb(len(candidates), k) <= draws:
        subsets = list(itertools.combinations(candidates, k))
    else:
        rng = random.Random(seed)
        subsets = [tuple(sorted(rng.sample(candidates, k))) for _ in range(draws)]
    p_full = _target_probs(model, [example])[0]
    probs = _target_probs(model, [_without(example, top)] + [_without(example, s) for s in subsets])  # equal lengths
    p_top, p_random = probs[0], np.array(probs[1:])
    drops = p_full - p_random
    drop_top = p_full - p_top
    return Deletion(k, p_full, p_top, drop_top, float(drops.mean()), float(drops.std()), len(subsets),
                    float((drops >= drop_top - 1e-12).mean()), list(top))


def summarize(results: list[Deletion], seed: int = 0, resamples: int = 2000) -> dict:
    """Over a prompt set: mean drop by attribution vs by random removal, the paired difference
    with a bootstrap 95% interval, and a plain verdict."""
    if not results:
        return {"prompts": 0, "verdict": "no prompt had enough tokens for the deletion test"}
    diff = np.array([r.drop_top - r.drop_random_mean for r in results])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    if low > 0:
        verdict = "better than random: removing the top-attributed tokens lowers the target probability more"
    elif high < 0:
        verdict = "worse than random: the attribution ranks tokens against their effect"
    else:
        verdict = "no better than random: the difference from random removal is within noise"
    return {
        "prompts": len(results),
        "k": sorted({r.k for r in results}),
        "mean_p_full": float(np.mean([r.p_full for r in results])),
        "mean_drop_top": float(np.mean([r.drop_top for r in results])),
        "mean_drop_random": float(np.mean([r.drop_random_mean for r in results])),
        "mean_difference": float(diff.mean()),
        "difference_ci95": [float(low), float(high)],
        "share_top_beats_random": float(np.mean(diff > 0)),
        "mean_p_value": float(np.mean([r.random_at_least_as_bad for r in results])),
        "verdict": verdict,
    }


def compare(a: list[Deletion], b: list[Deletion], seed: int = 0, resamples: int = 2000) -> dict:
    """Paired comparison of two attributions' top-k drops on the same prompts (a - b)."""
    if not a or len(a) != len(b):
        return {"prompts": 0}
    diff = np.array([x.drop_top - y.drop_top for x, y in zip(a, b)])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"prompts": len(diff), "mean_difference": float(diff.mean()), "difference_ci95": [float(low), float(high)],
            "share_a_better": float(np.mean(diff > 1e-12)), "share_equal": float(np.mean(np.abs(diff) <= 1e-12))}


def to_json(result: Deletion | None) -> dict | None:
    return None if result is None else asdict(result)
