"""What an audit's four parts cost in FLOPs, so that it can say how long it will take before it
starts (at the rate the run's training measured on this machine) and weigh its bar by the work
left rather than by the count of parts."""

from __future__ import annotations

from typing import Any, Sequence

from candorlm.ledger.flops import forward_flops_per_token, generation_flops


def audit_flops(cfg: Any, canaries: int, canary_tokens: int, candidates: int, docs: Sequence[int], prefix: int,
                suffix: int, generations: int, generation_tokens: int) -> list[float]:
    """FLOPs of: canary exposure (every candidate and canary scored once), extraction (prefix then
    greedy suffix for each sampled document), membership (each sampled document scored once),
    and the PII regurgitation samples. `docs` are the sampled documents' lengths in tokens."""
    window = cfg.max_seq_len

    def forward(tokens: int) -> float:
        n = max(1, min(tokens, window))
        return float(forward_flops_per_token(cfg, n)) * n

    exposure = (candidates + canaries) * forward(canary_tokens) if canaries else 0.0
    extraction = len(docs) * float(generation_flops(cfg, max(1, prefix), max(1, suffix)))
    membership = sum(forward(n) for n in docs)
    sampling = generations * float(generation_flops(cfg, 1, max(1, min(generation_tokens, window - 1))))
    return [exposure, extraction, membership, sampling]
