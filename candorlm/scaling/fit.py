"""A power law L = a * x^(-alpha), fitted by least squares on log L against log x.

No irreducible-loss term: with three to five points a three-parameter fit (L = E + a x^-alpha)
has almost no degrees of freedom left, and its E is unidentifiable. The pure power law is the
straight line of a log-log plot; the residual standard error in log space says how well it
holds, and the extrapolation inherits all of that uncertainty (and more: power laws bend).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from candorlm.errors import CandorError


@dataclass(frozen=True)
class PowerLaw:
    a: float
    alpha: float
    points: int
    r2: float  # of the log-log line
    log_residual_std: float  # residual standard deviation of ln L (nan with 2 points)

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(x, -self.alpha)

    def to_dict(self) -> dict[str, float]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Fit y = a x^-alpha to positive points (at least two distinct x)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) != len(ys) or len(xs) < 2 or len(np.unique(xs)) < 2:
        raise CandorError("a power-law fit needs at least two points with different x")
    if (xs <= 0).any() or (ys <= 0).any():
        raise CandorError("a power-law fit needs positive x and y")
    lx, ly = np.log(xs), np.log(ys)
    slope, intercept = np.polyfit(lx, ly, 1)
    pred = intercept + slope * lx
    ss_res = float(((ly - pred) ** 2).sum())
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    dof = len(xs) - 2
    resid = math.sqrt(ss_res / dof) if dof > 0 else float("nan")
    return PowerLaw(a=float(math.exp(intercept)), alpha=float(-slope), points=len(xs), r2=round(r2, 6),
                    log_residual_std=resid)
