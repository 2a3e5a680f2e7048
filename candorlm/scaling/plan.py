"""`candorlm plan --time 10m`: which model gives the lowest loss in the time you have, on this machine.

Two measurements, both of this machine and this data:

- a scaling sweep (`candorlm sweep`, `sweep.json`): for each size, validation loss at several
  points of one run. Per size, a power law L(D) = a * D^-alpha in the tokens trained D is
  fitted to that curve (candorlm.scaling.fit);
- the throughput of each size: a few real training steps timed now (`ledger.estimate.calibrate`),
  or the sweep's own figure with `probe=False`.

A time budget T then gives each size its tokens, D = tokens/s x (T - the final evaluation), and
its predicted loss L(D). The plan is the size with the lowest; its uncertainty is the fit's
prediction interval in log space (residuals of the curve, widened for how far D lies beyond the
measured points), and how sure the choice is, the chance that the runner-up is really better
under those intervals (normal in ln L).

Known bias: the curve points of a sweep come from one schedule each, so the points before its end
were taken at a learning rate not yet decayed. A run whose schedule is sized to D ends lower
than that curve at D, so the prediction leans pessimistic, more for short budgets. The error
against real runs is measured in docs/training.md ("Choosing the model for the time").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from candorlm.config import parse_duration, resolve
from candorlm.errors import CandorError
from candorlm.io.files import read_json
from candorlm.scaling.fit import PowerLaw, fit_power_law

FORWARD_SHARE = 1 / 3  # an evaluation token costs about a third of a training token
EVAL_TOKENS = 262144  # train.eval_tokens' default: what the final evaluation scores


@dataclass(frozen=True)
class Prediction:
    """A size's predicted validation loss at a token count, with a one-sigma interval."""

    loss: float
    low: float
    high: float
    log_se: float  # standard error of ln L at this point
    beyond: float  # tokens / the most tokens measured (>1: an extrapolation)


def predict(tokens: Sequence[float], losses: Sequence[float], at: float) -> tuple[PowerLaw, Prediction]:
    """Fit L = a * D^-alpha to a curve and predict L at `at` tokens, with the regression's
    prediction interval in ln L (one sigma); with two points the spread is unknown and taken as 10%."""
    law = fit_power_law(tokens, losses)
    lx = np.log(np.asarray(tokens, dtype=np.float64))
    n = len(lx)
    x0 = math.log(at)
    sxx = float(((lx - lx.mean()) ** 2).sum())
    s = law.log_residual_std if not math.isnan(law.log_residual_std) else 0.1
    se = s * math.sqrt(1 + 1 / n + (x0 - lx.mean()) ** 2 / sxx)
    loss = float(law(at))
    return law, Prediction(loss, loss * math.exp(-se), loss * math.exp(se), se, at / float(np.max(tokens)))


def curve_points(row: dict[str, Any], steps: int) -> tuple[list[float], list[float], float]:
    """A sweep size's curve as (tokens, losses) and its bits-per-byte per nat of loss."""
    per_step = row["tokens"] / steps
    points = [(p["step"] * per_step, p["val_loss"]) for p in row.get("curve", []) if p["step"] > 0]
    if len(points) < 2:
        raise CandorError(f"the sweep's {row['preset']} run has fewer than two validation points; "
                          f"run the sweep again with more steps")
    ratios = [p["val_bpb"] / p["val_loss"] for p in row.get("curve", []) if p.get("val_bpb") and p["val_loss"]]
    to_bpb = float(np.median(ratios)) if ratios else float("nan")
    return [t for t, _ in points], [v for _, v in points], to_bpb


def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def choose(sweep_doc: dict[str, Any], seconds: float, tokens_per_s: dict[str, float],
           eval_tokens: int = EVAL_TOKENS) -> dict[str, Any]:
    """The plan for `seconds` of training from a sweep and each size's throughput (a pure function)."""
    rows = []
    for row in sweep_doc["sizes"]:
        tps = tokens_per_s.get(row["preset"])
        if not tps:
            continue
        tokens, losses, to_bpb = curve_points(row, sweep_doc["steps"])
        train_s = max(0.0, seconds - eval_tokens / (tps / FORWARD_SHARE))
        budget_tokens = max(1.0, tps * train_s)
        law, p = predict(tokens, losses, budget_tokens)
        rows.append({
            "preset": row["preset"], "model": row.get("model", {}), "parameters": row["parameters"],
            "tokens_per_s": round(tps, 1), "tokens": int(budget_tokens),
            "val_loss": round(p.loss, 4), "val_loss_interval": [round(p.low, 4), round(p.high, 4)],
            "val_bpb": round(p.loss * to_bpb, 4) if not math.isnan(to_bpb) else None,
            "val_bpb_interval": ([round(p.low * to_bpb, 4), round(p.high * to_bpb, 4)]
                                 if not math.isnan(to_bpb) else None),
            "log_se": round(p.log_se, 4), "beyond_measured": round(p.beyond, 2),
            "fit": law.to_dict(),
        })
    if not rows:
        raise CandorError("no size of the sweep has a throughput to plan with")
    rows.sort(key=lambda r: r["val_loss"])
    best = rows[0]
    sure = 1.0
    if len(rows) > 1:
        second = rows[1]
        gap = math.log(second["val_loss"]) - math.log(best["val_loss"])
        spread = math.hypot(best["log_se"], second["log_se"])
        sure = normal_cdf(gap / spread) if spread > 0 else (1.0 if gap > 0 else 0.5)
    return {"time_s": seconds, "best": best["preset"], "confidence": round(sure, 3), "candidates": rows}


def probe_throughput(sweep_doc: dict[str, Any], steps: int = 4) -> dict[str, float]:
    """Each size's training tokens/s on this machine now: a few real steps timed (ledger.estimate)."""
    from candorlm.device import resolve_precision
    from candorlm.ledger.estimate import calibrate

    out = {}
    import torch

    precision = resolve_precision("auto", torch.device("cpu"))
    for row in sweep_doc["sizes"]:
        cfg = resolve(row["preset"], model={"vocab_size": row["model"]["vocab_size"]}).model
        batch = sweep_doc["batch_size"]
        seq = int(row["tokens"] / sweep_doc["steps"] / batch)
        cal = calibrate(cfg, batch, seq, precision, steps)
        out[row["preset"]] = batch * seq / cal.step_seconds
    return out


def default_sweep_dir(data: str | Path) -> Path:
    return Path("sweeps") / Path(data).resolve().name


def plan(time: str, data: str | Path | None = None, sweep: str | Path | None = None, *, probe: bool = True,
         sweep_steps: int = 400, eval_tokens: int = EVAL_TOKENS) -> dict[str, Any]:
    """Predict which size gives the lowest validation loss in `time` on this machine, and how sure that is.

    Args:
        time: The training time to plan for (90s, 5m, 1h).
        data: Data directory from `candorlm prepare`; with no sweep yet, one is run on it into sweeps/NAME.
        sweep: A sweep directory (`candorlm sweep`) to take the scaling fit from (default: sweeps/NAME of --data).
        probe: Time a few training steps of each size now (else: the sweep's own tokens/s).
        sweep_steps: Steps per size when the plan has to run the sweep first.
        eval_tokens: Validation tokens of the run's final evaluation (train.eval_tokens), whose time
            comes out of the budget.
    """
    try:
        seconds = parse_duration(time)
    except ValueError as exc:
        raise CandorError(f"--time: {exc}") from None
    if sweep is None:
        if data is None:
            raise CandorError("plan needs a scaling sweep: give --sweep DIR (from `candorlm sweep`) or --data DIR")
        sweep = default_sweep_dir(data)
        if not (Path(sweep) / "sweep.json").is_file():
            from candorlm.progress import console
            from candorlm.scaling.sweep import sweep as run_sweep

            console.print(f"no sweep in {sweep} yet: measuring one ({sweep_steps} steps per size)")
            run_sweep(data, sweep, steps=sweep_steps)
    path = Path(sweep) / "sweep.json"
    if not path.is_file():
        raise CandorError(f"{sweep} holds no sweep.json; make one with `candorlm sweep --data DATA --out {sweep}`")
    doc = read_json(path)
    tps = probe_throughput(doc) if probe else {r["preset"]: r["tokens_per_s"] for r in doc["sizes"]}
    out = choose(doc, seconds, tps, eval_tokens)
    out["sweep"] = str(sweep)
    # the sweep's batch and window: the fit holds for runs that train as it did
    best_row = next(r for r in doc["sizes"] if r["preset"] == out["best"])
    out["train"] = {"batch_size": doc["batch_size"], "seq_len": int(best_row["tokens"] / doc["steps"] / doc["batch_size"])}
    out["throughput"] = "measured now: 4 training steps per size" if probe else "the sweep's own tokens/s"
    out["method"] = ("per size, L = a * tokens^-alpha fitted to the sweep's validation curve; tokens = tokens/s x "
                     "(time - final evaluation); one-sigma prediction interval in ln L; confidence: chance the "
                     "runner-up is not better")
    return out
