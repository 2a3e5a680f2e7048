"""Bootstrap confidence intervals over documents for bits-per-byte and its differences.

Bits-per-byte is a ratio of sums (bits over bytes), so each resample draws documents with
replacement and recomputes the ratio, which weights long documents by their length as the point
estimate does. A gap between two sets of different documents resamples each set independently.
"""

from __future__ import annotations

import numpy as np

from candorlm.generalization.scoring import LN2, DocScores

RESAMPLES = 1000
LEVEL = 0.95


def _resampled_bpb(scores: DocScores, rng: np.random.Generator, resamples: int) -> np.ndarray:
    n = len(scores)
    if n == 0:
        return np.full(resamples, np.nan)
    picks = rng.integers(0, n, size=(resamples, n))
    return scores.text_nats[picks].sum(1) / LN2 / np.maximum(scores.bytes[picks].sum(1), 1)


def _interval(samples: np.ndarray, level: float) -> list[float]:
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return [round(float(lo), 4), round(float(hi), 4)]


def bpb_interval(scores: DocScores, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> list[float]:
    """Percentile interval of a set's bits-per-byte."""
    return _interval(_resampled_bpb(scores, np.random.default_rng(seed), resamples), level)


def gap_interval(domain: DocScores, reference: DocScores, *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> list[float]:
    """Percentile interval of bpb(domain) - bpb(reference), the two resampled independently."""
    rng = np.random.default_rng(seed)
    return _interval(_resampled_bpb(domain, rng, resamples) - _resampled_bpb(reference, rng, resamples), level)


def paired_gap_interval(perturbed: DocScores, reference: DocScores, *, resamples: int = RESAMPLES,
                        level: float = LEVEL, seed: int = 0) -> list[float]:
    """Interval of bpb(perturbed) - bpb(reference) when document i of both is the same document
    (a perturbation of it): the same resampled indices on both sides."""
    if len(perturbed) != len(reference):
        raise ValueError("a paired interval needs the same documents on both sides")
    rng = np.random.default_rng(seed)
    n = len(reference)
    picks = rng.integers(0, n, size=(resamples, n))

    def bpb(s: DocScores) -> np.ndarray:
        return s.text_nats[picks].sum(1) / LN2 / np.maximum(s.bytes[picks].sum(1), 1)

    return _interval(bpb(perturbed) - bpb(reference), level)
