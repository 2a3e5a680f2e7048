"""The training loop, one for every kind of training: it takes a step function.

Pretraining a decoder, an encoder or an encoder-decoder (trainer.py, with the step of
objectives.py), DP-SGD (privacy/dp.py gives its own step) and task fine-tuning
(tasks/finetune.py) all run here. The loop owns what they share:

- the learning rate of each step (a schedule: step -> lr, set on the optimizer before the step);
- after each step, in this order: the health check (health.py), the step's one agreement between
  ranks (agreement.py), the log figures, evaluation, the metrics row, the checkpoint, the stop;
- the time spent evaluating and saving, the progress bar, Ctrl-C (save, then stop);
- the final save, unless the last step already saved.

What plugs in: `step(step) -> (loss, grad_norm)` does one optimizer step (accumulation,
clipping, noise: its own business); `evaluate() -> scores`; `save(step)`; and `Callback`s,
which see the run go by (the metrics file, the ledger's meter, the manifest, a fine-tuning's
best epoch). Every rank runs every callback, in list order, at the same points: a callback may
issue collectives in `on_start` and `on_end` (the ledger sums its figures there) and writes
files only on rank 0 (`loop.agree.is_main`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from candorlm.device import peak_rss_bytes
from candorlm.progress import progress_bar
from candorlm.training.agreement import Agreement
from candorlm.training.health import Health

log = logging.getLogger("candorlm")

StepFn = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]  # step index (0-based) -> (loss, grad norm)



class Callback:
    """Hooks into the loop; override what you need. `row` is the step's metrics row (a dict
    that later callbacks and the metrics file see); `scores` what `evaluate` returned."""

    def on_start(self, loop: "Loop") -> None: ...

    def on_begin(self, loop: "Loop") -> None:
        """After every callback's on_start (the ledger's peak probe), just before the first step:
        where a clock that budgets the steps starts."""

    def on_log(self, loop: "Loop", row: dict[str, Any]) -> None: ...

    def on_evaluate(self, loop: "Loop", scores: dict[str, Any], row: dict[str, Any], seconds: float) -> None: ...

    def on_row(self, loop: "Loop", row: dict[str, Any]) -> None: ...

    def on_save(self, loop: "Loop", seconds: float) -> None: ...

    def on_end(self, loop: "Loop", result: "LoopResult") -> None: ...

    def close(self) -> None:
        """Always called last, also when the loop failed (close files)."""


@dataclass
class LoopResult:
    steps: int
    interrupted: bool = False
    final_eval: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # what callbacks add (the ledger's total)


class _StopFlag:
    """First Ctrl-C asks the loop to save and stop after the current step; a second one aborts.

    Under torchrun a Ctrl-C reaches each worker twice (from the terminal and from torchrun's
    agent), and SIGTERM is how torchrun and SLURM ask workers to stop: there, `signals` includes
    SIGTERM and one repeat within `grace_s` of the first counts as the same request. The agent's
    copy can come seconds late on a loaded machine (a 2 s window once let it abort one rank while
    the other waited in a collective), so the window is wide and only one repeat is absorbed: a
    second Ctrl-C, whose copies make the third and fourth signals, still aborts."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT,), grace_s: float = 0.0) -> None:
        self.requested = False
        self.signals, self.grace_s = signals, grace_s
        self._first: float | None = None
        self._absorbed = False
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self._first is not None:
            if not self._absorbed and time.monotonic() - self._first <= self.grace_s:
                self._absorbed = True  # the same request, forwarded by torchrun's agent
                return
            raise KeyboardInterrupt
        self._first = time.monotonic()
        self.requested = True
        log.warning("interrupt: saving a checkpoint after this step (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Loop:
    """Runs `step` from `first_step` to `max_steps` (see the module docstring).

    eval_every / save_every: 0 means only at the end. stop_signals: () leaves Ctrl-C as it is
    (KeyboardInterrupt). out_of_time(step): asked after every step; True (on any rank) ends the
    run there, evaluated and saved, on every rank at the same step. peak_lr: named in the error
    of a diverged run (default: the step's). model: its weights are checked before each save and
    at the end, so non-finite ones are never written. show_total: False when max_steps is only a
    placeholder (a time budget sizes the run)."""

    def __init__(self, step: StepFn, optimizer: torch.optim.Optimizer, *, schedule: Callable[[int], float],
                 max_steps: int, device: torch.device, first_step: int = 0, log_every: int = 1, eval_every: int = 0,
                 save_every: int = 0, evaluate: Callable[[], dict[str, Any]] | None = None,
                 save: Callable[[int], Any] | None = None, callbacks: Sequence[Callback] = (),
                 agree: Agreement | None = None, tokens_per_step: int = 0, grad_clip: float = 0.0,
                 precision: str = "fp32", stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT,),
                 grace_s: float = 0.0, out_of_time: Callable[[int], bool] | None = None, peak_lr: float | None = None,
                 label: str = "training", model: torch.nn.Module | None = None, show_total: bool = True):
        self.step_fn, self.optimizer, self.schedule = step, optimizer, schedule
        self.max_steps, self.device, self.step = max_steps, device, first_step
        self.first_step = first_step
        never = max_steps + 1  # a period that never comes: only the end
        self.log_every, self.eval_every, self.save_every = log_every or never, eval_every or never, save_every or never
        self.evaluate_fn, self.save_fn = evaluate, save
        self.callbacks = list(callbacks)
        self.agree = agree or Agreement()
        self.tokens_per_step, self.grad_clip, self.precision = tokens_per_step, grad_clip, precision
        self.stop_signals, self.grace_s, self.out_of_time = stop_signals, grace_s, out_of_time
        self.label, self.peak_lr, self.show_total = label, peak_lr, show_total
        self.model = model  # checked for non-finite weights before each save and at the end
        self._health = Health(device)
        self.saved_step: int | None = first_step if first_step else None  # resumed from a checkpoint of it
        self.start_time = 0.0
        self._stop: _StopFlag | None = None

    @property
    def interrupted(self) -> bool:
        """Whether a stop was asked for (Ctrl-C, SIGTERM) during this run: it ends after the current step."""
        return self._stop is not None and self._stop.requested

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _check_weights(self) -> None:
        # Every rank asks at the same points (each save, the end): no non-finite weights are written.
        if self.model is not None and self.agree.any(not Health.weights_finite(self.model)):
            raise self._health.error(self.step, lr=self.peak_lr or self.lr, grad_clip=self.grad_clip,
                                     precision=self.precision, weights=True, resumable=self.save_fn is not None)

    def save(self) -> None:
        if self.save_fn is None:
            return
        self._check_weights()
        start = time.perf_counter()
        self.save_fn(self.step)
        self.saved_step = self.step
        self._each("on_save", time.perf_counter() - start)

    def run(self) -> LoopResult:
        try:
            return self._run()
        finally:
            for callback in self.callbacks:
                callback.close()

    def _run(self) -> LoopResult:
        result = LoopResult(self.step)
        self._each("on_start")
        health = self._health
        self._each("on_begin")
        self.start_time = last_time = time.perf_counter()
        last_step = self.step
        total = self.max_steps if self.show_total else None
        with _StopFlag(self.stop_signals, self.grace_s) as stop, progress_bar(self.label, total=total) as bar:
            self._stop = stop
            bar.advance(self.step)
            while self.step < self.max_steps:
                lr = self.schedule(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, grad_norm = self.step_fn(self.step)
                self.step += 1
                health.observe(self.step, loss, grad_norm)
                # The one collective of each step: every rank gets the same plan (agreement.py).
                plan = self.agree.step(self.step, self.max_steps, log_every=self.log_every,
                                       eval_every=self.eval_every, save_every=self.save_every,
                                       stop=stop.requested,
                                       out_of_time=bool(self.out_of_time and self.out_of_time(self.step)),
                                       diverged=health.on_host and health.bad())
                if not health.on_host and (plan.log or plan.evaluate or plan.save):  # read the GPU only here
                    plan = replace(plan, diverged=self.agree.any(health.bad()))
                if plan.diverged:
                    raise health.error(self.step, lr=self.peak_lr or lr, grad_clip=self.grad_clip,
                                       precision=self.precision, resumable=self.save_fn is not None)
                bar.advance(1)
                row: dict[str, Any] = {}
                if plan.log:
                    now = time.perf_counter()
                    row["loss"] = self.agree.mean(loss)
                    row.update(lr=lr, grad_norm=float(grad_norm))
                    if self.tokens_per_step:
                        tps = self.tokens_per_step * (self.step - last_step) / max(now - last_time, 1e-9)
                        row.update(tokens_per_s=round(tps, 1), tokens_seen=self.step * self.tokens_per_step)
                    row.update(elapsed_s=round(now - self.start_time, 3),
                               peak_rss_mb=round(peak_rss_bytes() / 2**20, 1))
                    last_time, last_step = now, self.step
                    self._each("on_log", row)
                    status = f"loss {row['loss']:.3f}"
                    bar.update(status=status + (f"  {row['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in row else ""))
                if plan.evaluate and self.evaluate_fn is not None:
                    start = time.perf_counter()
                    scores = self.evaluate_fn()
                    result.final_eval = scores
                    self._each("on_evaluate", scores, row, time.perf_counter() - start)
                if row:
                    self._each("on_row", row)
                if plan.save:
                    self.save()
                if plan.stop or plan.out_of_time:
                    result.interrupted = plan.stop
                    break
        result.steps = self.step
        result.wall_s = time.perf_counter() - self.start_time
        result.tokens_per_s = self.tokens_per_step * (self.step - self.first_step) / max(result.wall_s, 1e-9)
        if not result.interrupted and self.saved_step != self.step:  # known alike on every rank
            self.save()
        if self.save_fn is None:
            self._check_weights()
        self._each("on_end", result)
        return result
