"""Differentially private training (DP-SGD, Abadi et al. 2016) with Opacus.

Each step draws a Poisson sample of training windows (each window independently with
probability q = batch_size * grad_accum / windows), computes one gradient per window (Opacus'
functorch mode on our decoder: RMSNorm, SDPA, rotary positions, tied embeddings all work),
clips each to norm C, sums them, adds Gaussian noise of standard deviation sigma * C and divides
by the expected batch size. The noise multiplier sigma is chosen before training so that the
planned steps spend exactly the target (epsilon, delta), by Opacus' RDP accountant; the spent
budget is recorded in RUN/dp.json at every checkpoint.

What the guarantee covers: one training window (seq_len tokens) is the privacy unit. A
document longer than a window, or text repeated across windows (a canary planted 100 times),
is protected only by group privacy, with an epsilon that grows with the number of windows it
touches. The logged training loss (metrics.jsonl) is not privatized.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from candorlm.errors import CandorError
from candorlm.shards import WindowIndex
from candorlm.training.loop import Callback, Loop
from candorlm.training.trainer import Trainer

log = logging.getLogger("candorlm")
GRAD_SAMPLE_MODE = "functorch"
# Opacus' default RDP orders stop at 63; with few steps or a small sample rate the best order is
# higher, and the bound would be needlessly loose (too much noise for the budget).
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 100, 128, 160, 200, 256, 384, 512, 1024]


@dataclass
class DPBudget:
    epsilon: float  # target, for the planned steps
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    expected_batch: int
    planned_steps: int
    windows: int
    seq_len: int


def default_delta(windows: int) -> float:
    """Below 1/N, as DP requires to mean anything: min(1e-5, 1/(10 N)) for N training windows."""
    return min(1e-5, 0.1 / windows)


def plan(epsilon: float, delta: float | None, max_grad_norm: float, windows: int, expected_batch: int,
         steps: int, seq_len: int) -> DPBudget:
    """The noise multiplier that spends (epsilon, delta) in `steps` steps at sample rate q."""
    from opacus.accountants.utils import get_noise_multiplier

    if epsilon <= 0:
        raise CandorError(f"--dp-epsilon must be positive, got {epsilon}")
    if max_grad_norm <= 0:
        raise CandorError(f"--dp-max-grad-norm must be positive, got {max_grad_norm}")
    delta = default_delta(windows) if delta is None else delta
    if not 0 < delta < 1:
        raise CandorError(f"--dp-delta must be between 0 and 1, got {delta}")
    if delta >= 1 / windows:
        log.warning("dp delta %.2g is not below 1/N = %.2g (N = %d training windows): the guarantee is weak",
                    delta, 1 / windows, windows)
    q = expected_batch / windows
    if q >= 1:
        raise CandorError(f"the expected batch ({expected_batch} windows) is not smaller than the training split "
                          f"({windows} windows): DP-SGD needs sampling. Use a smaller train.batch_size or more data.")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # still a valid bound
            sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps,
                                         accountant="rdp", epsilon_tolerance=0.01, alphas=ALPHAS)
    except ValueError as exc:
        raise CandorError(f"no noise level reaches epsilon {epsilon} in {steps} steps ({exc}); raise --dp-epsilon "
                          f"or train fewer steps") from None
    return DPBudget(epsilon, delta, max_grad_norm, float(sigma), q, expected_batch, steps, windows, seq_len)


def spent_epsilon(budget: DPBudget, steps: int) -> float:
    """Epsilon spent after `steps` steps (RDP accountant), at the budget's delta."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(budget.noise_multiplier, budget.sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # still a valid bound
        return float(accountant.get_epsilon(delta=budget.delta, alphas=ALPHAS))


class DPSGD:
    """Wraps a model and optimizer for DP-SGD; `step` does one private optimizer step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, windows: WindowIndex, *,
                 epsilon: float, delta: float | None, max_grad_norm: float, batch_size: int, grad_accum: int,
                 steps: int, seed: int, autocast_ctx: Any = None):
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.budget = plan(epsilon, delta, max_grad_norm, len(windows), batch_size * grad_accum, steps, windows.seq_len)
        self.model = model
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True,
                                       force_functorch=GRAD_SAMPLE_MODE == "functorch")
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.budget.noise_multiplier,
                                     max_grad_norm=max_grad_norm, expected_batch_size=self.budget.expected_batch,
                                     loss_reduction="mean")
        self.autocast = autocast_ctx or nullcontext
        log.info("DP-SGD: epsilon %.3g, delta %.2g over %d steps -> noise multiplier %.3f, sample rate %.4g, "
                 "clip %.3g", epsilon, self.budget.delta, steps, self.budget.noise_multiplier, self.budget.sample_rate,
                 max_grad_norm)

    def sample(self, step: int) -> np.ndarray:
        """The Poisson sample of window indices for `step` (seeded by step: resumes exactly)."""
        rng = np.random.default_rng([self.seed, step, 0xD9])
        n = len(self.windows)
        k = rng.binomial(n, self.budget.sample_rate)
        return np.sort(rng.choice(n, size=k, replace=False))

    def step(self, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """One private step; returns (mean loss of the sampled windows, mean per-window gradient norm
        before clipping)."""
        from candorlm.model import lm_loss

        picked = self.sample(step)
        chunks = [picked[i:i + self.batch_size] for i in range(0, len(picked), self.batch_size)] or [picked]
        total_loss = torch.zeros((), device=device)
        norms = []
        for i, chunk in enumerate(chunks):
            if i < len(chunks) - 1:
                self.optimizer.signal_skip_step(True)  # accumulate clipped sums, no noise yet
            if len(chunk) == 0:
                for p in self.optimizer.params:  # an empty Poisson batch: the step is noise alone
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            else:
                x, y = self.windows.get(chunk.tolist())
                x, y = x.to(device), y.to(device)
                with warnings.catch_warnings():
                    # Opacus' functorch path and backward hooks warn about fp32 autocast and inputs
                    # without gradients (token ids); both are expected here.
                    warnings.filterwarnings("ignore", message=".*(autocast|Full backward hook).*")
                    with self.autocast():
                        logits = self.module(x)
                    loss = lm_loss(logits, y)
                    loss.backward()
                total_loss += loss.detach() * len(chunk)
                norms.append(_per_sample_norms(self.optimizer))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        mean_norm = torch.cat(norms).mean() if norms else torch.zeros(())
        return total_loss / max(len(picked), 1), mean_norm

    def record(self, steps: int) -> dict[str, Any]:
        b = self.budget
        return {"mechanism": "DP-SGD (Poisson sampling, per-window clipping, Gaussian noise)",
                "library": "opacus", "grad_sample_mode": GRAD_SAMPLE_MODE, "accountant": "rdp",
                "privacy_unit": f"one training window of {b.seq_len} tokens",
                "epsilon_target": b.epsilon, "epsilon_spent": round(spent_epsilon(b, steps), 4), "delta": b.delta,
                "steps": steps, "planned_steps": b.planned_steps, "noise_multiplier": b.noise_multiplier,
                "max_grad_norm": b.max_grad_norm, "sample_rate": b.sample_rate,
                "expected_batch": b.expected_batch, "training_windows": b.windows}


class DPRecord(Callback):
    """Writes the spent budget to RUN/dp.json at every checkpoint (one process: DP-SGD trains in one)."""

    def __init__(self, dp: DPSGD, path: Path) -> None:
        self.dp, self.path = dp, path

    def on_save(self, loop: Loop, seconds: float) -> None:
        from candorlm.io.files import write_json

        write_json(self.path, self.dp.record(loop.step))


def attach(trainer: Trainer) -> DPSGD:
    """Train `trainer`'s run with DP-SGD (train.dp_*): its step becomes the private one, and the
    budget is recorded at every checkpoint. Refused with several processes or a non-decoder."""
    from candorlm.device import autocast

    t = trainer.config.train
    if trainer.world.distributed:
        raise CandorError(f"--dp-epsilon trains in one process: its privacy accounting assumes one process drawing "
                          f"Poisson-sampled batches, and clipping and noise across {trainer.world.world_size} "
                          f"processes is not implemented. Drop --nproc (or torchrun), or drop --dp-epsilon.")
    if trainer.config.model.arch != "decoder":
        raise CandorError(f"--dp-epsilon trains decoders only (next-token windows are its privacy unit); "
                          f"this run's model.arch is '{trainer.config.model.arch}'. Drop --dp-epsilon or use "
                          "--arch decoder.")
    assert t.dp_epsilon is not None
    dp = DPSGD(trainer.model, trainer.optimizer, trainer.train_windows, epsilon=t.dp_epsilon, delta=t.dp_delta,
               max_grad_norm=t.dp_max_grad_norm, batch_size=t.batch_size, grad_accum=t.grad_accum,
               steps=trainer.max_steps, seed=t.seed, autocast_ctx=lambda: autocast(trainer.precision, trainer.device))
    if trainer.resume:
        check_resume(trainer.run.path / "dp.json", dp.budget)
    trainer.use_step(lambda step: dp.step(step, trainer.device), private=True)
    trainer.callbacks.append(DPRecord(dp, trainer.run.path / "dp.json"))
    return dp


def _per_sample_norms(optimizer) -> torch.Tensor:
    grads = [g.reshape(len(g), -1).norm(2, dim=-1) for g in optimizer.grad_samples]
    return torch.stack(grads, dim=1).norm(2, dim=1).detach().float()


def check_resume(record_path: Path, budget: DPBudget) -> None:
    """A DP run resumes only with the same budget, or its accounting would be wrong."""
    from candorlm.io.files import read_json

    if not record_path.is_file():
        return
    old = read_json(record_path)
    if not math.isclose(old.get("noise_multiplier", -1), budget.noise_multiplier, rel_tol=1e-6):
        raise CandorError(f"--resume: {record_path} was trained with noise multiplier {old.get('noise_multiplier')}, "
                          f"now {budget.noise_multiplier:.4f}; resume with the same --dp-* settings, data and steps")
