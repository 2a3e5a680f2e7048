"""How long work will take, said before it starts, and what the figure rests on (below the
features, so that every one of them, training's tasks, the audit, the sweep, can say it).

Two bases, best first:
- measured: a run's ledger.json holds the FLOP/s its training achieved on this machine; work on
  the same machine is forecast as its FLOPs (candorlm.ledger.flops) at that rate. Fine-tuning
  batches are shorter than pretraining windows and use the cores less well, so such a forecast
  reads low; the work then times its own first steps and says again (`after_first_steps`).
- timed: the work's own first steps (or units), extrapolated to the rest.
No assumed utilization is used here: where neither exists, the forecast says so.

Durations a person types (`--time 5m`) are parsed here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from candorlm.config import parse_duration as config_duration
from candorlm.device import device_name
from candorlm.errors import CandorError
from candorlm.io.files import read_json


def parse_duration(text: str | float) -> float:
    """Seconds in '90', '90s', '5m', '1h' or '1h30m' (config.parse_duration), as a CandorError."""
    try:
        return config_duration(text)
    except ValueError as exc:
        raise CandorError(f"'{text}' is not a duration: {exc}") from None


def say_duration(seconds: float) -> str:
    """A duration as a person reads it: 40 s, 12 min, 2.5 h."""
    if seconds < 120:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Forecast:
    seconds: float | None  # None: no basis yet
    basis: str  # what the figure rests on, in words

    def __str__(self) -> str:
        if self.seconds is None:
            return f"estimated time: not known yet ({self.basis})"
        return f"estimated time: about {say_duration(self.seconds)} ({self.basis})"


def measured_flops_per_s(run: str | Path | None) -> tuple[float, str] | None:
    """The FLOP/s `run`'s training achieved, from its ledger.json, when it ran on this machine's
    kind of CPU (or on the same GPU model): (rate, where it comes from)."""
    if run is None:
        return None
    path = Path(run) / "ledger.json"
    try:
        total = (read_json(path) or {}).get("train", {}).get("total", {}) if path.is_file() else {}
    except (CandorError, ValueError, OSError):
        return None
    rate = (total.get("achieved_flops_per_s") or {}).get("value")
    device = total.get("device")
    device = device.get("value") if isinstance(device, dict) else device
    if not isinstance(rate, (int, float)) or rate <= 0 or not _this_machine(str(device or "")):
        return None
    return float(rate), f"{Path(run).name}'s training throughput measured on this machine ({rate / 1e9:,.1f} GFLOP/s)"


def _this_machine(device: str) -> bool:
    names = {device_name(torch.device("cpu"))}
    if torch.cuda.is_available():
        names.add(device_name(torch.device("cuda")))
    return any(name and name in device for name in names)


def forecast_flops(flops: float, run: str | Path | None, what: str = "") -> Forecast:
    """`flops` of work at the rate `run`'s ledger measured on this machine, else no figure yet."""
    measured = measured_flops_per_s(run)
    if measured is None:
        return Forecast(None, "no measured throughput on this machine; timed after the first steps")
    rate, where = measured
    return Forecast(flops / rate, f"{what}{', ' if what else ''}FLOPs at {where}; a lower bound for short batches")


def after_first_steps(done: int, elapsed: float, total: int, extra_s: float = 0.0, what: str = "steps") -> Forecast:
    """The rest of `total` units at the pace of the first `done` (taking `elapsed` seconds), plus
    `extra_s` seconds of work that follows them."""
    if done <= 0:
        return Forecast(None, f"no {what} timed yet")
    per = elapsed / done
    extra = f", then about {say_duration(extra_s)} of evaluation" if extra_s >= 1 else ""
    return Forecast(per * (total - done) + extra_s,
                    f"measured: the first {done} {what} took {per:.2f} s each; {total - done:,} to go{extra}")
