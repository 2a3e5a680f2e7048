"""A diverged training stops loudly: the first non-finite loss or gradient norm ends the run.

Without this, a learning rate of 1000 trained to the end and wrote NaN weights as the run's model,
exit 0. Now the loop asks `Health` after every step, before anything is logged, evaluated or
saved: a non-finite value stops every rank at the same step (the flag travels in the step's one
agreement), with one line naming the step and the likely causes, exit 2. Nothing of that step is
saved, so the newest checkpoint is the last good one and stays resumable.

On the CPU the check reads the values every step (they are on the host already). On a GPU reading
them would wait for the step to finish, so the first bad step is tracked on the device and read
only at the steps that log, evaluate or save, which every save is among.
"""

from __future__ import annotations

import torch

from candorlm.errors import CandorError


class Diverged(CandorError):
    """Training met a non-finite loss or gradient norm."""


class Health:
    def __init__(self, device: torch.device) -> None:
        self.on_host = device.type == "cpu"
        self._first = torch.full((), -1, dtype=torch.long, device=device)  # first bad step, -1: none
        self._loss = torch.zeros((), device=device)
        self._norm = torch.zeros((), device=device)

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Record step `step`'s loss and gradient norm (no host sync on a GPU)."""
        loss, grad_norm = loss.detach().float(), grad_norm.detach().float().to(loss.device)
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        first = bad & (self._first < 0)
        self._first = torch.where(first, torch.full_like(self._first, step), self._first)
        self._loss = torch.where(first, loss, self._loss)
        self._norm = torch.where(first, grad_norm, self._norm)

    def bad(self) -> bool:
        """Whether a non-finite value was seen (reads the device: call it where a sync is fine)."""
        return int(self._first) >= 0

    @staticmethod
    def weights_finite(model: torch.nn.Module) -> bool:
        """Whether this rank's weights (its shards, under FSDP) are all finite: a finite loss does
        not promise it, since the update after it can overflow. Asked before every save."""
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP shard (DTensor)
            if local.is_floating_point() and not bool(torch.isfinite(local).all()):
                return False
        return True

    def error(self, step: int, *, lr: float, grad_clip: float, precision: str, weights: bool = False,
              resumable: bool = True) -> Diverged:
        """The one-line error for a run stopped after step `step` (weights: its update left
        non-finite weights, though its loss was finite; resumable: the run keeps checkpoints, as
        `train` does and `finetune`, which keeps nothing of a failed run, does not)."""
        first = int(self._first)
        seen = f"step {first}" if first >= 0 else f"step {step} (on another rank)"
        values = (f": loss {float(self._loss):g}, gradient norm {float(self._norm):g}" if first >= 0 else "")
        if weights and first < 0:
            seen, values = f"step {step}", ": its update left non-finite weights"
        causes = [f"a learning rate too high ({'train.lr=' if resumable else '--lr '}{lr:g})",
                  "no gradient clipping (train.grad_clip=0)" if grad_clip <= 0
                  else f"loose gradient clipping (train.grad_clip={grad_clip:g})"]
        if precision in ("bf16", "fp16"):
            causes.append(f"{precision} precision overflowing (try --precision fp32)")
        then = ("Nothing from that step was saved: resume from the last checkpoint with --resume after changing the "
                "settings, or start again") if resumable else "Nothing was written: run it again with other settings"
        return Diverged(f"training diverged at {seen}{values}; likely causes: {', '.join(causes)}. {then}")
