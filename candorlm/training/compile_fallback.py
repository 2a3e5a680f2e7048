"""When compiling the training step fails: the run goes on eagerly, or stops in one line.

torch.compile compiles when the compiled function is first called (in the forward), the backward
when it first runs (AOTAutograd compiles it lazily), and again wherever one of its guards fails
(a new batch shape). So a compiler that cannot work (no C++ compiler, a broken $CXX, a missing
header, a construct dynamo cannot trace) shows up inside a training step, perhaps minutes into
the run, as one of model/compiled.py's `compile_errors()`. Anything else the step raises (a shape
error, an out-of-memory, a non-finite loss, Ctrl-C) is not the compiler's and goes on up as it is.

- `train.compile` unset ("where it pays", compile_policy.py): the step is done again eagerly and
  the run stays eager. The failed attempt leaves nothing behind: its gradients are dropped, the
  data cursor and the random state are put back, so the step trains on the same batch as an
  eager run's and is counted once; the optimizer has not stepped (compiling fails in the forward
  or the backward, before `optimizer.step`) and holds the model's own parameters (compiling the
  blocks wraps none). One warning says why and how not to try (`train.compile = false`), and the
  ledger records it (`record`).
- `train.compile = true`: the run stops with one CandorError line saying what failed and what to
  do; its checkpoints so far are complete (they are written whole or not at all), and the line
  names the last one to resume from (trainer.py).
- a Ctrl-C while the C++ compiler runs kills the compiler too (it is in the terminal's process
  group), which inductor reports as a failed compile. That is the user's stop, not the compiler's
  failure: the step is done again eagerly (so it counts), no warning or ledger figure says the
  compile failed, and the run saves and stops as after any Ctrl-C (`interrupted`).
- several processes (torchrun) stop in one line too, whatever train.compile says: a rank whose
  compile failed cannot turn back alone while the others wait for it in the gradients'
  all-reduce (DDP, FSDP), and agreeing first would take a collective that those ranks never
  reach, so they would hang until the timeout. torchrun ends the other ranks when one exits.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from candorlm.errors import CandorError
from candorlm.model.compiled import compile_errors, cxx_failed, failure_reason

log = logging.getLogger("candorlm")

StepFn = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


class CompileFailed(CandorError):
    """The run stops because compiling its training step failed (the trainer adds what it kept)."""


class CompileFallback:
    """Wraps a training step function (see the module's header).

    compiled(): whether the next step runs compiled code; to_eager(): make it run eagerly from
    now on; snapshot() -> state and rewind(state): what a step consumes before its optimizer step
    (the data cursor, the random state), taken before each compiled step and put back after a
    failed one. explicit: `train.compile = true` (stop, do not fall back). interrupted(): whether a
    stop was asked for (Ctrl-C): a compile that fails then was cut short by it."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, compiled: Callable[[], bool],
                 to_eager: Callable[[], None], snapshot: Callable[[], Any], rewind: Callable[[Any], None],
                 explicit: bool, distributed: bool = False, interrupted: Callable[[], bool] = lambda: False) -> None:
        self.optimizer, self.compiled, self.to_eager, self.interrupted = optimizer, compiled, to_eager, interrupted
        self.snapshot, self.rewind = snapshot, rewind
        self.explicit, self.distributed = explicit, distributed
        self.failed: tuple[int, str] | None = None  # (step, reason) once compiling failed

    def wrap(self, step_fn: StepFn) -> StepFn:
        def step(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.compiled():
                return step_fn(index)
            state = self.snapshot()
            try:
                return step_fn(index)
            except compile_errors() as e:
                self._fail(index, e)
            # Outside the `except`: the failed attempt's frames and tensors are freed before the redo.
            self.rewind(state)
            return step_fn(index)
        return step

    def _fail(self, index: int, error: BaseException) -> None:
        if self.interrupted() and not self.distributed:  # Ctrl-C killed the compiler: redo eagerly, then save and stop
            self.to_eager()
            self.optimizer.zero_grad(set_to_none=True)
            log.info("interrupted while compiling: step %d runs without compiling, then the run saves and stops",
                     index + 1)
            return
        reason = failure_reason(error)
        if self.explicit or self.distributed:
            raise CompileFailed(stop_message(reason, cxx_failed(error), self.explicit)) from None
        self.to_eager()
        self.optimizer.zero_grad(set_to_none=True)  # what the failed attempt accumulated (a backward cut short)
        self.failed = (index, reason)
        log.warning("compiling the training step failed, training goes on without compiling: %s (set "
                    "train.compile = false not to try)", reason)

    def record(self) -> dict[str, Any]:
        """The ledger's figure of a run whose compile failed (nothing when it did not)."""
        if self.failed is None:
            return {}
        step, reason = self.failed
        return {"compile": {"value": "failed, eager", "unit": "",
                            "method": f"compiling the training step failed at step {step + 1} ({reason}); that step "
                                      f"and the rest of the run trained without compiling"}}


_FIXES = {  # by model/compiled.py's cxx_failed
    "InvalidCxxCompiler": "install a C++ compiler (Debian: apt-get install g++) or point $CXX at a working one, or ",
    "CppCompileError": "fix what the C++ compiler says (Debian: apt-get install g++ python3-dev gives it Python's "
                       "headers) or point $CXX at a working one, or ",
}


def stop_message(reason: str, cxx: str | None, explicit: bool) -> str:
    """The one line of a run that stops because compiling failed: what failed, what to do."""
    what = f"could not compile the training step: {reason}"
    if not explicit:  # several processes, compiled by default
        return (f"{what}; with several processes the run cannot go on without compiling on one rank alone: "
                f"set train.compile = false")
    return f"{what}; {_FIXES.get(cxx or '', '')}set train.compile = false to train without compiling"
