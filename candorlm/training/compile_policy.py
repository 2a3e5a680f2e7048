"""Whether to compile the training forward: `train.compile` unset means "where it pays".

On CUDA compiling is the norm (on). On the CPU, compiling the blocks (model/compiled.py) trains
faster at every preset width, but the first run on a machine pays a cold compile first (an empty
inductor cache: tens of seconds on one core), and only a run long enough earns that back:
with a speed-up s and a cold compile of C seconds, a run of T eager seconds gains when
T > C * s / (s - 1). Measured (bench/block_throughput.py --compile, docs/training.md): C about
20-35 s on one core, s from about 1.1 at the narrow presets to 1.2 at the small one, so the
break-even is 3-6 minutes; compiling is chosen when the run is expected to last PAYS_AFTER_S,
twice that, so a busy machine or a slower compile does not turn it into a loss.

- a run with a time budget (`train.time`) knows its length before its first step: compiled
  from the first step when the budget is at least PAYS_AFTER_S (the compile then falls in the
  first step, which the budget does not use to measure the step rate, and its seconds count
  against the budget like any other);
- a run of a number of steps times its first MEASURE_STEPS eager steps, then compiles when the
  steps left would take at least PAYS_AFTER_S (`CompileWhenItPays`);
- several processes (torchrun) decide before the first step, as a time-budgeted run does, so
  that every rank does the same: a step-count run stays eager unless `train.compile` says so;
- without a C++ compiler (inductor's `g++`, or $CXX) nothing is compiled unless asked for: a
  default must not fail ten minutes into a run; asked for (`train.compile = true`), the run
  stops before it starts, saying what to install.

A compiler that is there but fails (a broken $CXX, a missing header, a construct dynamo cannot
trace) is only found out inside a compiled step: compile_fallback.py then trains on eagerly
(default) or stops in one line (asked for, or several processes).
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from typing import Callable

import torch
from torch import nn

from candorlm.config import RunConfig, parse_duration
from candorlm.errors import CandorError
from candorlm.model.compiled import compile_blocks

log = logging.getLogger("candorlm")

PAYS_AFTER_S = 600.0  # expected run length (eager) from which compiling on the CPU is chosen
MEASURE_STEPS = 5  # eager steps timed, after the first, before a step-count run decides

StepFn = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


def compile_upfront(config: RunConfig, device: torch.device, distributed: bool = False) -> bool | None:
    """True or False when known before the first step; None: a step-count run on the CPU in one
    process, which `CompileWhenItPays` decides after its first steps."""
    t = config.train
    if t.compile and device.type == "cpu" and not has_cxx():
        raise CandorError("train.compile = true on the CPU needs a C++ compiler for inductor's kernels (g++, or "
                          "$CXX): install one (Debian: apt-get install g++), or leave train.compile unset")
    if t.compile is not None:
        return t.compile
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    if not has_cxx():
        return False
    if t.time is not None:
        return parse_duration(t.time) >= PAYS_AFTER_S
    return None if not distributed else False


def has_cxx() -> bool:
    """A C++ compiler for inductor's CPU kernels is on the PATH."""
    return any(shutil.which(name) for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")))


class CompileWhenItPays:
    """Wraps a step-count run's step function: times the first eager steps, then compiles the
    model's blocks (in place) if the steps left would take at least PAYS_AFTER_S eager."""

    def __init__(self, model: nn.Module, first_step: int, max_steps: int) -> None:
        self.model, self.first_step, self.max_steps = model, first_step, max_steps
        self.ends: list[float] = []  # perf_counter at the end of each step so far
        self.decided: bool | None = None  # True: compiled; False: stays eager

    def wrap(self, step_fn: StepFn) -> StepFn:
        def step(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            out = step_fn(index)
            if self.decided is None:
                self.ends.append(time.perf_counter())
                if len(self.ends) == 1 + MEASURE_STEPS:  # the first step paid one-off costs: not counted
                    self.decide(index + 1)
            return out
        return step

    def decide(self, steps_done: int) -> bool:
        step_s = statistics.median(b - a for a, b in zip(self.ends, self.ends[1:]))
        left_s = step_s * (self.max_steps - steps_done)
        self.decided = left_s >= PAYS_AFTER_S
        if self.decided:
            log.info("compiling the blocks: %d steps left at %.2f s each (%.0f s; compiling pays after %.0f s)",
                     self.max_steps - steps_done, step_s, left_s, PAYS_AFTER_S)
            compile_blocks(self.model)
        return self.decided
