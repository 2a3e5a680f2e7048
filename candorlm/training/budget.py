"""Training for a time, not a step count: `candorlm train --time 5m`.

What a person has is minutes, not steps; what they get is the validation loss when the minutes
are up. A `TimeBudget` turns the first kind of budget into a schedule:

- it times the first steps (after the very first, which pays one-off costs) and sizes the
  schedule to the steps the budget holds: the warmup is at most `WARMUP_SHARE` of them;
- it decays the learning rate by *elapsed time* (a cosine from the peak to `min_lr_ratio`
  of it), so a machine that slows down halfway still ends its decay when the time is up,
  where a step-sized schedule would be cut off at a high learning rate;
- it says when to stop: when what is left is no more than the final evaluation and half a
  step, so the run ends on time rather than one evaluation late;
- it reports budget against actual for the ledger.

Everything here is a pure function of a clock, so the tests drive it with a fake one.
Evaluation and checkpoint time count against the budget (the person waits for them too);
the budget learns their cost from the steps that took longer than the typical one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from candorlm.config import RunConfig, parse_duration
from candorlm.io.files import read_json

Clock = Callable[[], float]

WARMUP_SHARE = 0.05  # of the steps the budget is measured to hold; the configured warmup_steps caps it
MEASURE_STEPS = 5  # steps timed, after the first, before the schedule is sized
TRUSTED_AFTER = 3  # step intervals timed before the typical step may bring the stop forward
RECENT_STEPS = 16  # the typical step time is the median of this many recent steps
FORWARD_SHARE = 1 / 3  # an evaluation token costs about a third of a training token (no backward)
NO_LIMIT = 1 << 62  # the step count a time-budgeted run starts with; the budget sets the real one


WSD_DECAY_SHARE = 0.3  # warmup-stable-decay: the last 30% of the time decays linearly


def cosine(progress: float, min_ratio: float) -> float:
    """The decay factor at `progress` in [0, 1]: 1 at the start, `min_ratio` at the end."""
    p = min(1.0, max(0.0, progress))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def wsd(progress: float, min_ratio: float) -> float:
    """Warmup-stable-decay's factor: 1 until the last WSD_DECAY_SHARE, then linear to `min_ratio`."""
    p = min(1.0, max(0.0, progress))
    into = max(0.0, p - (1 - WSD_DECAY_SHARE)) / WSD_DECAY_SHARE
    return 1 - (1 - min_ratio) * into


DECAYS = {"cosine": cosine, "wsd": wsd}


def spent_before(run_dir: Path) -> float:
    """Seconds of its time budget that a resumed run used in earlier sessions (its ledger.json says)."""
    path = run_dir / "ledger.json"
    if not path.is_file():
        return 0.0
    used = read_json(path).get("train", {}).get("total", {}).get("time_used", {}).get("value")
    return float(used) if isinstance(used, (int, float)) else 0.0


def budget_for(config: RunConfig, tokens_per_step: int, run_dir: Path, resumed: bool,
               eval_tokens: int | None = None) -> "TimeBudget | None":
    """The run's time budget, or None when it trains for a number of steps. `eval_tokens`: what one
    evaluation really reads (train.eval_tokens capped by the validation split), when known."""
    if config.train.time is None:
        return None
    return TimeBudget.for_run(config, tokens_per_step, spent=spent_before(run_dir) if resumed else 0.0,
                              eval_tokens=eval_tokens)


@dataclass
class TimeBudget:
    """The schedule and stopping rule of a run with a time budget.

    Attributes:
        seconds: The whole budget, training, evaluation and checkpoints together.
        peak_lr: The learning rate after warmup.
        min_lr_ratio: Where the decay ends, as a share of the peak.
        max_warmup: The configured warmup steps: the measured warmup is never longer.
        eval_steps: What the final evaluation costs, in training steps (an estimate, until
            a periodic evaluation is seen).
        spent: Seconds of this budget used by earlier sessions of the same run (a resume).
        schedule: The decay's shape over the time: "cosine" or "wsd".
        clock: Seconds, monotonic; `time.perf_counter` unless a test gives a fake one.
    """

    seconds: float
    peak_lr: float
    min_lr_ratio: float = 0.1
    max_warmup: int = 100
    eval_steps: float = 0.0
    spent: float = 0.0
    clock: Clock = time.perf_counter
    schedule: str = "cosine"  # the decay's shape: cosine, or wsd (warmup, stable, decay)
    warmup: int = 0  # sized after MEASURE_STEPS steps; max_warmup until then
    step_s: float | None = None  # the typical step's seconds, once measured
    extra_s: float = 0.0  # the longest time seen beyond a typical step (an evaluation, a checkpoint)
    _start: float | None = None
    _first_step: int = 0
    _last: float | None = None
    _measure_from: float | None = None
    _done: int = 0
    _recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))

    @classmethod
    def for_run(cls, config: RunConfig, tokens_per_step: int, spent: float = 0.0,
                clock: Clock = time.perf_counter, eval_tokens: int | None = None) -> "TimeBudget":
        """The budget of `config.train.time` for a run that trains `tokens_per_step` per step;
        one evaluation reads `eval_tokens` (default: train.eval_tokens)."""
        t = config.train
        if t.time is None:
            raise ValueError("the config has no train.time")
        # A small validation split holds fewer tokens than train.eval_tokens asks for: reserving
        # for the asked-for count kept back three times the final evaluation's real cost.
        tokens = t.eval_tokens if eval_tokens is None else eval_tokens
        eval_steps = tokens / max(tokens_per_step, 1) * FORWARD_SHARE if tokens else 0.0
        return cls(seconds=parse_duration(t.time), peak_lr=t.lr, min_lr_ratio=t.min_lr_ratio,
                   max_warmup=max(1, t.warmup_steps), eval_steps=eval_steps, spent=spent, clock=clock,
                   schedule=t.schedule)

    # ------------------------------------------------------------ the clock
    def begin(self, step: int = 0) -> None:
        """Start the clock; `step` is where this session starts (0, or the resumed step)."""
        self._start = self._last = self.clock()
        self._first_step = step
        self.warmup = self.max_warmup

    def elapsed(self) -> float:
        """Seconds of the budget used so far, earlier sessions included."""
        if self._start is None:
            return self.spent
        return self.spent + self.clock() - self._start

    def reserve(self) -> float:
        """Seconds kept back for the final evaluation and checkpoint."""
        step = self.step_s or 0.0
        return max(self.eval_steps * step, self.extra_s)

    def end(self) -> float:
        """The elapsed time at which training stops: the budget less the reserve and half a step."""
        return max(0.0, self.seconds - self.reserve() - 0.5 * (self.step_s or 0.0))

    # ------------------------------------------------------------ the schedule
    def lr(self, step: int) -> float:
        """The learning rate for optimizer step `step` (0-based), at the time it starts."""
        warm = min(1.0, (step + 1) / max(1, self.warmup or self.max_warmup))
        end = self.end()
        progress = self.elapsed() / end if end > 0 else 1.0
        return self.peak_lr * warm * DECAYS[self.schedule](progress, self.min_lr_ratio)

    def after_step(self, step: int) -> bool:
        """Note that step `step` (the count of steps done) finished now; True when training should stop."""
        now = self.clock()
        done = self._done = step - self._first_step
        if done == 1:
            self._measure_from = now  # the first step pays one-off costs (allocation, warm caches)
        elif self._last is not None and done > 1:
            interval = now - self._last
            self._recent.append(interval)
            # From the second step on, the typical step is known well enough to stop on time, even
            # when the whole budget holds only a few steps; the warmup waits for MEASURE_STEPS.
            self.step_s = statistics.median(self._recent)
            if len(self._recent) >= 3:
                self.extra_s = max(self.extra_s, interval - self.step_s)
            if done == 1 + MEASURE_STEPS and self._measure_from is not None:
                self.warmup = max(1, min(self.max_warmup, round(WARMUP_SHARE * self.estimated_steps())))
        self._last = now
        if len(self._recent) < TRUSTED_AFTER:  # one slow early step must not end a budget that holds hundreds
            return self.elapsed() >= self.seconds
        return self.elapsed() >= self.end()

    def estimated_steps(self) -> int:
        """The steps this session will have trained when the budget ends (a forecast)."""
        if not self.step_s or self._start is None:
            return NO_LIMIT
        left = max(0.0, self.end() - self.elapsed())
        return self._first_step + self._done + int(left / self.step_s)

    # ------------------------------------------------------------ the record
    def record(self) -> dict[str, Any]:
        """Budget against actual, as ledger figures (`{"value", "unit", "method"}`)."""
        used = self.elapsed()
        return {
            "time_budget": {"value": self.seconds, "unit": "s", "method": "train.time (--time)"},
            "time_used": {"value": round(used, 3), "unit": "s",
                          "method": "wall time from the first step to the end of the final evaluation and "
                                    "checkpoint" + (f", {self.spent:.1f} s of it in earlier sessions"
                                                    if self.spent else "")},
            "time_used_share": {"value": round(used / self.seconds, 4) if self.seconds else None, "unit": "fraction",
                                "method": "time used / time budget (1.0: on time)"},
            "warmup_steps": {"value": self.warmup, "unit": "steps",
                             "method": f"min(train.warmup_steps, {WARMUP_SHARE:.0%} of the steps measured to fit)"},
        }
