"""Agreement between a run's processes: every control-plane collective, in one order by construction.

Gloo and NCCL match collectives by their order in each process, not by name: if one rank skips
a collective that another issues, the next ones pair up wrongly (a 4-byte stop check against an
8-byte piece of the ledger's sum) and the run aborts. So every control-plane collective of a run
(stop checks, evaluation and checkpoint decisions, the ledger's sums, the peak probe, barriers)
goes through this module, and each is issued by every rank at the same point of the loop:

- once per step, `step` reduces one small vector (the ranks' stop requests and "out of time"
  flags) and returns a `StepPlan`: whether this step logs, evaluates, saves or ends, computed
  from the step number and the agreed flags alone, so it is the same on every rank;
- a rank-local decision or figure (a probe, the host of a temp name) is made on rank 0 and
  broadcast (`from_main`), or agreed with one reduce;
- nothing here is ever called inside a branch that depends on local time, load, a cache or the
  filesystem: the caller branches on a `StepPlan` or on values every rank computed the same way.

Every collective runs on a gloo group of its own (`group`), apart from the gradients' DDP/FSDP
traffic, so it never waits for the GPU and never interleaves with the data plane. In a world of
one process every method is the identity or a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from candorlm.errors import CandorError


class CollectiveFailed(CandorError):
    """A collective between the ranks failed (a rank died, or the ranks disagreed)."""


@dataclass(frozen=True)
class StepPlan:
    """What every rank does after a step; equal on every rank by construction."""

    step: int
    log: bool
    evaluate: bool
    save: bool
    stop: bool  # a stop request (Ctrl-C, SIGTERM) on any rank: save and stop after this step
    out_of_time: bool  # a time budget ran out on any rank: evaluate, save and end after this step
    diverged: bool = False  # a non-finite loss or gradient norm on any rank: stop, saving nothing

    @property
    def last(self) -> bool:
        return self.stop or self.out_of_time


@dataclass
class Agreement:
    """The control plane of a run of `size` processes; `group` is the gloo group it uses."""

    rank: int = 0
    size: int = 1
    group: Any = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ the one collective per step
    def step(self, step: int, max_steps: int, *, log_every: int, eval_every: int, save_every: int,
             stop: bool = False, out_of_time: bool = False, diverged: bool = False) -> StepPlan:
        """The plan after optimizer step `step` (1-based): one reduce of this rank's flags."""
        stop, out_of_time, diverged = self.flags(stop, out_of_time, diverged)
        end = step >= max_steps or out_of_time
        return StepPlan(step=step, log=step % log_every == 0 or end,
                        evaluate=step % eval_every == 0 or end,
                        save=step % save_every == 0 or end or stop, stop=stop, out_of_time=out_of_time,
                        diverged=diverged)

    # ------------------------------------------------------------ building blocks
    def flags(self, *local: bool) -> list[bool]:
        """Each flag True on every rank when it is True on any rank (one reduce of a small vector)."""
        if not self.distributed:
            return [bool(f) for f in local]
        return [v > 0 for v in self._all_reduce([float(bool(f)) for f in local], dist.ReduceOp.MAX)]

    def any(self, flag: bool) -> bool:
        return self.flags(flag)[0]

    def reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Sum or max of each figure over ranks (float64 on the CPU; no pickling of objects)."""
        if not self.distributed:
            return [float(v) for v in values]
        return self._all_reduce(values, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every rank (the others' are ignored): a rank-local figure made one."""
        if not self.distributed:
            return [float(v) for v in values]
        return self.reduce([float(v) if self.is_main else 0.0 for v in values], "sum")

    def mean(self, value: torch.Tensor) -> float:
        """The mean over ranks of a per-rank figure (the logged loss)."""
        mine = float(value.detach().float().cpu())
        return self.reduce([mine], "sum")[0] / self.size

    def barrier(self) -> None:
        if self.distributed:
            self._guard(lambda: dist.barrier(group=self.group), "a barrier")

    def on_main(self, action: Callable[[], Any]) -> None:
        """Run `action` on rank 0 while the others wait; an error on rank 0 is raised on every rank."""
        error: BaseException | None = None
        if self.is_main:
            try:
                action()
            except BaseException as exc:  # re-raised below, after the others know
                error = exc
        if self.any(error is not None):
            if error is not None:
                raise error
            raise CandorError("rank 0 failed (its message is above); stopping this rank too")

    def on_every(self, action: Callable[[], Any]) -> Any:
        """Run `action` on every rank; if it fails on any rank, every rank raises (none waits forever)."""
        error: BaseException | None = None
        result = None
        try:
            result = action()
        except BaseException as exc:
            error = exc
        if self.any(error is not None):
            if error is not None:
                raise error
            raise CandorError("another rank failed (its message is above); stopping this rank too")
        return result

    def _all_reduce(self, values: list[float], op: Any) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        self._guard(lambda: dist.all_reduce(t, op=op, group=self.group), f"an all-reduce of {len(values)} values")
        return t.tolist()

    def _guard(self, collective: Callable[[], Any], what: str) -> None:
        try:
            collective()
        except RuntimeError as exc:  # DistBackendError and gloo's errors: a peer died or disagreed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CollectiveFailed(f"rank {self.rank}: {what} between the ranks failed ({first[:200]})") from None
