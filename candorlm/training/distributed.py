"""Several processes, one training run, on PyTorch's own engine: torchrun's environment, the
process group, DDP or FSDP2 wrapping, gradient accumulation without needless syncs, and the few
collectives the trainer and its ledger need.

A process started by torchrun finds RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the
rendezvous address in its environment; `World.from_env` reads them and joins the process group:
NCCL when the run computes on CUDA, gloo on the CPU. Without them (a plain `candorlm train`) the
world has one process, nothing is initialised, and every method below is the identity or a
no-op, so the trainer keeps one code path.

Strategies (train.strategy):
- ddp: DistributedDataParallel. Every rank holds the whole model and optimizer; gradients are
  averaged in the backward pass; rank 0 writes the usual single-file checkpoints.
- fsdp: FSDP2 `fully_shard`, one unit per layer (each entry of the model's ModuleLists) plus the
  root (embeddings, final norm, tied output layer). Parameters, gradients and optimizer state are
  sharded; a MixedPrecisionPolicy gathers parameters in bf16 and reduces gradients in fp32 when
  the run trains in bf16. Checkpoints are sharded (checkpoint/sharded.py).

Agreement between ranks (stop requests, ledger figures, barriers) goes through a gloo group on
the CPU, so it never waits for the GPU: the training loop has no host syncs outside logging steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from candorlm.device import physical_cores, pick_device
from candorlm.errors import CandorError
from candorlm.ledger.training import Ranks

log = logging.getLogger("candorlm")

# torchrun sets these in every process it starts.
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# How long ranks wait for each other in a collective (a checkpoint save on one rank, evaluation).
TIMEOUT = timedelta(minutes=30)


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _ENV)


@dataclass
class World:
    """This process's place among the run's processes; a world of one when not under torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    strategy: str = "single"  # single | ddp | fsdp
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False  # we initialised the process group, so we tear it down
    _control: Any = None  # a gloo group for CPU-side agreement
    _ddp: Any = None  # the DistributedDataParallel wrapper, for no_sync
    _sharded: nn.Module | None = None  # the fully_shard-ed model, for gradient-sync switching

    # ------------------------------------------------------------ setup
    @classmethod
    def from_env(cls, strategy: str = "ddp", device: str = "auto") -> "World":
        """Join torchrun's process group (if launched by torchrun) and pick this rank's device."""
        dev = pick_device(device)
        if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
            return cls(device=dev)
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if dev.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise CandorError(f"local rank {local_rank} has no GPU: this node shows {torch.cuda.device_count()} "
                                  f"GPUs; start at most that many processes per node (--nproc-per-node)")
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        owns = not dist.is_initialized()
        if owns:
            kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
        control = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else None
        world = cls(rank, world_size, local_rank, local_world_size, strategy, dev, backend, owns, control)
        world._quiet_other_ranks()
        if world.is_main:
            log.info("distributed: %d processes (%d per node), %s over %s", world_size, local_world_size,
                     strategy, backend)
        return world

    def _quiet_other_ranks(self) -> None:
        # One voice: rank 0 logs, shows progress and writes the run directory.
        if not self.is_main:
            os.environ["CANDORLM_PROGRESS"] = "0"
            logging.getLogger("candorlm").setLevel(logging.ERROR)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def control_group(self) -> Any:
        """The gloo group for CPU-side agreement and checkpoint collectives (None: the default group)."""
        return self._control

    def cpu_threads(self, requested: int | None) -> int | None:
        """Threads for this rank on the CPU: the node's physical cores shared among its ranks."""
        if requested or not self.distributed:
            return requested
        return max(1, physical_cores() // self.local_world_size)

    @property
    def stop_signals(self) -> tuple[signal.Signals, ...]:
        # torchrun's agent passes the signal it got (SIGINT from Ctrl-C, SIGTERM from SLURM or
        # `kill`) on to every worker: either asks for a save and a stop.
        return (signal.SIGINT, signal.SIGTERM) if self.distributed else (signal.SIGINT,)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    # ------------------------------------------------------------ wrapping
    def wrap(self, model: nn.Module, precision: str, compile: bool) -> nn.Module:
        """Prepare `model` for training; returns the module to call for the training forward pass.

        FSDP shards `model` in place (its parameters become DTensors), so build the optimizer
        after this call. `model` itself stays the plain module for evaluation and saving."""
        if self.strategy == "fsdp" and self.distributed:
            return self._fully_shard(model, precision, compile)
        forward: nn.Module = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = self._ddp = DDP(model, device_ids=ids)
        return torch.compile(forward) if compile else forward  # type: ignore[return-value]

    def _fully_shard(self, model: nn.Module, precision: str, compile: bool) -> nn.Module:
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:
            raise CandorError(f"--strategy fsdp needs FSDP2 (torch 2.6 or later); this is torch {torch.__version__}: "
                              f"upgrade torch, or train with --strategy ddp") from None

        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if precision == "bf16" else MixedPrecisionPolicy())
        for layers in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
            for layer in layers:
                if compile:
                    layer.compile()  # per layer, in place: names and FSDP units stay as they are
                fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        self._sharded = model
        return model

    @contextlib.contextmanager
    def accumulating(self, sync: bool) -> Iterator[None]:
        """Around a micro-batch's forward and backward: with sync=False the gradients only
        accumulate locally (DDP no_sync, FSDP without reduce-scatter); the last micro-batch of
        a step syncs them all at once."""
        if sync or not self.distributed:
            yield
        elif self._ddp is not None:
            with self._ddp.no_sync():
                yield
        elif self._sharded is not None:
            self._sharded.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                self._sharded.set_requires_gradient_sync(True)  # type: ignore[operator]
        else:
            yield

    # ------------------------------------------------------------ collectives
    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a per-rank figure (the logged loss); every rank must call it."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return total / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (a stop request, for example)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._control)
        return bool(t.item())

    def reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Sum or max of each figure over ranks (float64 on the CPU; no pickling of objects)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self._control)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self._control)

    def on_main(self, action: Callable[[], Any]) -> None:
        """Run `action` on rank 0 while the others wait; an error on rank 0 is raised on every rank."""
        failed = False
        error: BaseException | None = None
        if self.is_main:
            try:
                action()
            except BaseException as exc:  # re-raised below, after the others know
                failed, error = True, exc
        if self.any(failed):
            if error is not None:
                raise error
            raise CandorError("rank 0 failed (its message is above); stopping this rank too")

    def ledger_ranks(self) -> Ranks:
        """What the ledger needs to sum the run's cost over all processes."""
        return Ranks(size=self.world_size, is_main=self.is_main, node_leader=self.local_rank == 0,
                     reduce=self.reduce if self.distributed else None)
