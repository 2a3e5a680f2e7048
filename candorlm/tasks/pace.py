"""How fine-tuning paces itself: the schedule for a number of steps or for a time budget, and
what it says about time before and while it works.

A `Pace` is the loop's only clock. With a step count it is the usual warmup-then-cosine schedule
and, after the first steps, a forecast from their measured time. With a time budget (`--time 5m`)
it is the trainer's `TimeBudget`: it times the first steps, sizes the schedule to the steps that
fit (less the dev evaluation after the last step: guessed from the step time, then seen in the
step that follows one), decays the learning rate by elapsed time, and stops when the budget is
spent. What it measured goes into task.json (`timing`), so that `candorlm eval` can say
how long the test evaluation will take before it starts.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from candorlm.config import TrainConfig
from candorlm.ledger.flops import forward_flops_per_token, train_flops_per_token
from candorlm.forecast import (
    Forecast,
    after_first_steps,
    forecast_flops,
    say_duration,
)
from candorlm.training.budget import NO_LIMIT, TimeBudget
from candorlm.training.optim import lr_at

log = logging.getLogger("candorlm")

BUDGET_STEPS = NO_LIMIT  # a time-budgeted run's step count until the first steps are timed
FIRST_STEPS = 5  # steps timed (after the first, which pays one-off costs) before a forecast is made
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of a training step (no backward, no update)


def _tokens(example: Any) -> int:
    """Tokens in one prepared example (its id lists: text, or source and target)."""
    return sum(len(part) for part in example if isinstance(part, list)) if isinstance(example, tuple) else 0


def train_forecast(run: Path | None, prepared: Any, max_steps: int, batch_size: int) -> Forecast:
    """Fine-tuning's time from its FLOPs at the rate the base run measured on this machine."""
    train = prepared.train
    mean = sum(_tokens(e) for e in train[:2000]) / max(1, min(len(train), 2000))
    if mean <= 0:
        return Forecast(None, "timed after the first steps")
    cfg, seq = prepared.model_config, max(1, round(mean))
    epochs = math.ceil(max_steps * batch_size / max(1, len(train)))
    try:
        flops = (train_flops_per_token(cfg, seq) * mean * batch_size * max_steps
                 + forward_flops_per_token(cfg, seq) * mean * len(prepared.dev) * epochs)
    except Exception:  # noqa: BLE001 (no FLOP formula for this shape: the first steps will tell)
        return Forecast(None, "timed after the first steps")
    return forecast_flops(flops, run, f"{max_steps:,} steps and {epochs} dev evaluation(s)")


def eval_forecast(run: str | Path, limit: int | None = None) -> Forecast:
    """The test evaluation's time at the pace the dev evaluations kept during fine-tuning."""
    try:
        info = json.loads((Path(run) / "task.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    rate = (info.get("timing") or {}).get("dev_examples_per_s")
    size = info.get("test_size")
    n = min(limit, size) if limit and size else limit or size
    if not rate or not n:
        return Forecast(None, "the bar shows the time left once the first batches are scored")
    return Forecast(n / rate, f"{n:,} test examples at the {rate:,.1f} per second that dev evaluation ran during "
                              f"fine-tuning; beam search and baselines add to it")


class Pace:
    """The fine-tuning loop's schedule, stopping rule and timing. A time budget is the trainer's
    own `TimeBudget` (candorlm/training/budget.py), told what a dev evaluation costs.

    Args:
        t: The fine-tuning's settings (peak learning rate, warmup, steps).
        budget_s: A time budget in seconds (None: train for t.max_steps).
        warmup_fraction: With a budget: the share of the steps that fit that warms up.
        clock: Seconds, monotonic (tests give a fake one).
    """

    def __init__(self, t: TrainConfig, budget_s: float | None = None, warmup_fraction: float = 0.06,
                 clock: Callable[[], float] = time.perf_counter):
        self.t, self.budget_s, self.clock = t, budget_s, clock
        self.warmup_fraction = warmup_fraction
        self.max_steps = t.max_steps
        self.warmup = t.warmup_steps
        # with a budget, the steps are not known until the first are timed: warm up over those meanwhile
        self.budget = (TimeBudget(seconds=budget_s, peak_lr=t.lr, min_lr_ratio=t.min_lr_ratio,
                                  max_warmup=1 + FIRST_STEPS, clock=clock) if budget_s is not None else None)
        self.step_s: float | None = None
        self.eval_s = 0.0  # all dev evaluations
        self.eval_examples = 0
        self._start = self._first = 0.0
        self._dev_size = 0
        self.steps_done = 0

    def begin(self, dev_size: int = 0) -> None:
        self._start = self.clock()
        self._dev_size = dev_size
        if self.budget is not None:
            # until a dev evaluation is timed, it is guessed as forward passes: a third of a step's work
            self.budget.eval_steps = dev_size / max(1, self.t.batch_size) * FORWARD_SHARE
            self.budget.begin(0)

    def elapsed(self) -> float:
        return self.clock() - self._start

    def lr(self, step: int) -> float:
        """The learning rate for step `step` (0-based)."""
        if self.budget is not None:
            return self.budget.lr(step)
        return lr_at(step, self.t.lr, self.warmup, self.max_steps, self.t.min_lr_ratio)

    def after_step(self, step: int) -> bool:
        """Note that `step` steps are done; True when max_steps changed (the budget sized or ended it)."""
        now = self.clock()
        self.steps_done = step
        if step == 1:
            self._first = now
        timed = step == 1 + FIRST_STEPS or (step < 1 + FIRST_STEPS and step == self.max_steps)
        if timed and step > 1:
            self.step_s = (now - self._first) / (step - 1)
        if self.budget is None:
            if timed and step > 1 and step < self.max_steps:
                extra = self._dev_size * self.step_s / max(1, self.t.batch_size) * FORWARD_SHARE
                log.info("%s", after_first_steps(step, now - self._start, self.max_steps, extra))
            return False
        stop = self.budget.after_step(step)
        if stop:
            self.max_steps = step  # the time is up: this step is the last
            return True
        if step == 1 + FIRST_STEPS and self.budget.step_s:
            self.max_steps = self.budget.estimated_steps()
            self.warmup = self.budget.warmup = max(1, min(round(self.warmup_fraction * self.max_steps),
                                                          self.max_steps))
            log.info("time budget %s: the first steps took %.2f s each, so about %s steps fit (warmup %d)",
                     say_duration(self.budget_s or 0), self.budget.step_s, f"{self.max_steps:,}", self.warmup)
            return True
        return False

    @contextmanager
    def evaluating(self, examples: int) -> Iterator[None]:
        """Time a dev evaluation of `examples` examples (a budget sees its cost in the next step's time)."""
        start = self.clock()
        yield
        self.eval_s += self.clock() - start
        self.eval_examples += examples
        if self.budget is not None and self.budget.step_s:
            self.max_steps = max(self.steps_done, self.budget.estimated_steps())

    def record(self) -> dict[str, Any]:
        """What was measured, for task.json."""
        out: dict[str, Any] = {"seconds": round(self.elapsed(), 2),
                               "step_s": round(self.step_s, 4) if self.step_s else None,
                               "dev_examples_per_s": (round(self.eval_examples / self.eval_s, 2)
                                                      if self.eval_s > 0 and self.eval_examples else None)}
        if self.budget is not None:
            out["time_budget_s"] = self.budget.seconds
        return out
