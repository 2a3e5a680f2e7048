"""Activation patching (causal tracing): run the corrupted prompt, restore one activation
from the clean run, and measure how much of the clean behaviour comes back.

    effect = (metric(patched) - metric(corrupted)) / (metric(clean) - metric(corrupted))

1 means restoring that activation alone recovers the clean answer; 0 means it does nothing.
The residual stream is patched per layer and position, which locates where the information
that decides the answer sits; attention heads are patched per layer and head (their output
at every position), which names the heads that carry it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from candorlm.errors import CandorError
from candorlm.model.hooks import HookPoint, hooks, run_with_cache

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits (B, T, V) -> (B,)


@dataclass
class Patching:
    rows: list[str]  # what was patched, one per row of `effect`
    effect: torch.Tensor  # (rows, columns): normalized effect
    clean: float  # metric on the clean run
    corrupted: float  # metric on the corrupted run


def logit_difference(position: int, good: int, bad: int) -> Metric:
    """logit(good) - logit(bad) at one position: a standard patching metric."""
    return lambda logits: logits[:, position, good].float() - logits[:, position, bad].float()


def _check(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    if clean.shape != corrupted.shape:
        raise CandorError(f"activation patching needs a clean and a corrupted prompt of the same number of tokens; "
                          f"got {clean.shape[-1]} and {corrupted.shape[-1]}. Change the corrupted prompt "
                          f"so that it tokenizes to as many tokens as the clean one")


def _normalize(values: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    gap = clean - corrupted
    if abs(gap) < 1e-6:
        raise CandorError("the clean and corrupted prompts give the same metric, so there is nothing to restore; "
                          "choose a corrupted prompt that changes the answer")
    return (values - corrupted) / gap


def _run(model: nn.Module, ids: torch.Tensor, extra: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(ids, *(e.expand(ids.shape[0], -1) for e in extra))


@torch.no_grad()
def patch_residual(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric,
                   prefix: str = "", extra: tuple[torch.Tensor, ...] = ()) -> Patching:
    """Effect of restoring the residual stream at (row, position): row 0 the embeddings, row
    l+1 the stream after block l. clean, corrupted: (1, T).

    For an encoder-decoder, `extra` = (decoder input (1, T'),), the same in both runs, and
    prefix "encoder." patches the encoder's stream (source positions), "" the decoder's
    (decoder positions: what cross-attention brought in from the source differs there)."""
    _check(clean, corrupted)
    n_blocks = len(model.get_submodule(prefix + "blocks")) if prefix else len(model.blocks)
    names = [f"{prefix}hook_embed"] + [f"{prefix}blocks.{i}.hook_resid_post" for i in range(n_blocks)]
    logits, cache = run_with_cache(model, clean, *extra, names=names)
    m_clean, m_corrupt = float(metric(logits)[0]), float(metric(_run(model, corrupted, extra))[0])
    T = cache[names[0]].shape[1]  # positions of the patched stream
    batch = corrupted.expand(T, -1)  # row b restores position b
    effects = []
    for name in names:
        source = cache[name][0]  # (T, C)

        def restore(x: torch.Tensor, hook: HookPoint, source: torch.Tensor = source) -> torch.Tensor:
            x = x.clone()
            x[torch.arange(T), torch.arange(T)] = source
            return x

        with hooks(model, {name: restore}):
            effects.append(metric(_run(model, batch, extra)).float().cpu())
    rows = ["embed"] + [f"block {i}" for i in range(len(names) - 1)]
    return Patching(rows, _normalize(torch.stack(effects), m_clean, m_corrupt), m_clean, m_corrupt)


@torch.no_grad()
def patch_heads(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric,
                names: list[str] | None = None, extra: tuple[torch.Tensor, ...] = ()) -> Patching:
    """Effect of restoring one attention head's output (hook_z, every position): (layer, head).
    clean, corrupted: (B, T); the metric is averaged over the batch. names: the heads' hook_z
    points, one per layer (default: the decoder's or encoder's self-attention,
    `blocks.{i}.attn.hook_z`; an encoder-decoder also has `encoder.blocks.{i}.attn.hook_z` and
    `blocks.{i}.cross_attn.hook_z`)."""
    _check(clean, corrupted)
    names = names or [f"blocks.{i}.attn.hook_z" for i in range(len(model.blocks))]
    logits, cache = run_with_cache(model, clean, *(e.expand(clean.shape[0], -1) for e in extra), names=names)
    m_clean, m_corrupt = float(metric(logits).mean()), float(metric(_run(model, corrupted, extra)).mean())
    effects = []
    for name in names:
        source = cache[name]  # (B, T, H, D)
        row = []
        for head in range(source.shape[2]):
            def restore(z: torch.Tensor, hook: HookPoint, head: int = head, source: torch.Tensor = source) -> torch.Tensor:
                z = z.clone()
                z[:, :, head] = source[:, :, head]
                return z

            with hooks(model, {name: restore}):
                row.append(float(metric(_run(model, corrupted, extra)).mean()))
        effects.append(torch.tensor(row))
    rows = [f"layer {i}" for i in range(len(names))]
    return Patching(rows, _normalize(torch.stack(effects), m_clean, m_corrupt), m_clean, m_corrupt)
