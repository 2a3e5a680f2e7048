"""What an audit's four parts cost in FLOPs, so that it can say how long it will take before it
starts (at the rate the run's training measured on this machine) and weigh its bar by the work
left rather than by the count of parts. A token costs about 2 x the model's matrix parameters
in a forward pass (the attention over the context, small at these lengths, is left out), with or
without the KV cache when generating."""

from __future__ import annotations

from typing import Sequence

import torch


def flops_per_token(model: torch.nn.Module) -> float:
    """2 x the parameters that take part in matrix products (matrices; the tied embedding is the head)."""
    return 2.0 * sum(p.numel() for p in model.parameters() if p.dim() >= 2)


def audit_flops(per_token: float, window: int, canaries: int, canary_tokens: int, candidates: int,
                docs: Sequence[int], prefix: int, suffix: int, generations: int, generation_tokens: int) -> list[float]:
    """FLOPs of: canary exposure (every candidate and canary scored once), extraction (prefix then
    greedy suffix for each sampled document), membership (each sampled document scored once, up to
    the `window`), and the PII regurgitation samples. `docs` are the sampled documents' lengths."""
    exposure = (candidates + canaries) * canary_tokens if canaries else 0
    extraction = len(docs) * (prefix + suffix)
    membership = sum(min(n, window) for n in docs)
    sampling = generations * min(generation_tokens, window - 1)
    return [per_token * tokens for tokens in (exposure, extraction, membership, sampling)]
