"""Optimizers: AdamW (the default), and Muon for the blocks' matrices with AdamW for the rest.

Muon (Jordan et al. 2024, `torch.optim.Muon` since torch 2.9) orthogonalizes each matrix's
momentum with a few Newton-Schulz iterations, so every direction of the update moves at the
same rate. It is defined for hidden matrices only: the token embedding (a lookup, not a linear
map), the output layer (tied to it by default) and the norm gains stay with AdamW, as in
modded-nanoGPT. Muon's step is RMS-matched to AdamW's (`adjust_lr_fn="match_rms_adamw"`, the
Moonlight rule), so `train.muon_lr` (default: `train.lr`) is on AdamW's scale.

Also the step-sized learning-rate schedule (`lr_at`) that pretraining and fine-tuning share.
"""

from __future__ import annotations

import torch
from torch import nn

from candorlm.config import RunConfig
from candorlm.errors import CandorError
from candorlm.training.budget import DECAYS


def _adamw(groups: list[dict], cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    kwargs = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    try:
        optimizer = torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device or torch version
        return torch.optim.AdamW(groups, **kwargs)
    optimizer.register_step_post_hook(_mark_written)
    return optimizer


def _mark_written(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    # The fused AdamW kernel writes the parameters without bumping their version counters, which
    # model/fused.py reads first to tell whether its concatenated q/k/v weight is still the weights'
    # (without this, and before fused.py also sampled the values, evaluation during training ran on
    # q/k/v weights from its first evaluation): bumped, the trainer's steps are seen for certain.
    for group in optimizer.param_groups:
        for p in group["params"]:
            torch.autograd.graph.increment_version(p)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The blocks' 2-D weights (attention and MLP projections): what Muon updates."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and ".blocks." in f".{name}" and "emb" not in name]


def build_optimizers(model: nn.Module, cfg: RunConfig) -> list[torch.optim.Optimizer]:
    """The optimizers of `cfg.train.optimizer`: [AdamW], or [Muon, AdamW] with train.optimizer = "muon".

    Weight decay on matrices only (AdamW's "adam" variant: none)."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    muon = hidden_matrices(model) if t.optimizer == "muon" else []
    taken = {id(p) for p in muon}
    rest = [p for p in params if id(p) not in taken]
    weight_decay = 0.0 if t.optimizer == "adam" else t.weight_decay
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    optimizers = [_adamw([g for g in groups if g["params"]], cfg)]
    if muon:
        optimizers.insert(0, torch.optim.Muon(muon, lr=t.muon_lr or t.lr, weight_decay=t.weight_decay,
                                              adjust_lr_fn="match_rms_adamw"))
    return optimizers


def lr_at(step: int, peak: float, warmup: int, max_steps: int, min_ratio: float, schedule: str = "cosine") -> float:
    """Linear warmup to `peak`, then a decay (cosine, or warmup-stable-decay's) to `peak * min_ratio` at `max_steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak * DECAYS[schedule](progress, min_ratio)


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The trainer's one optimizer: AdamW (or Adam) with weight decay on matrices only.

    Muon is measured in bench/time_to_quality.py, where it lost on time to quality at these sizes
    (docs/training.md, the ablation), so the trainer, its checkpoints and resume do not carry a
    second optimizer."""
    if cfg.train.optimizer == "muon":
        raise CandorError("train.optimizer = 'muon' is for bench/time_to_quality.py only: it lost the "
                          "time-to-quality ablation (docs/training.md), so `candorlm train` trains with adamw or adam")
    return build_optimizers(model, cfg)[0]
