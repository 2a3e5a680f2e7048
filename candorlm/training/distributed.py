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

Agreement between ranks (stop requests, evaluation and save decisions, ledger figures, barriers)
goes through `agreement.Agreement`, on a gloo group of its own on the CPU, so it never waits for
the GPU and never interleaves with the gradients' traffic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from candorlm.checkpoint.retention import latest_checkpoint
from candorlm.device import physical_cores, pick_device
from candorlm.errors import CandorError
from candorlm.model.compiled import compile_blocks
from candorlm.training.agreement import Agreement

log = logging.getLogger("candorlm")

# torchrun sets these in every process it starts.
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# How long ranks wait for each other in a collective (a checkpoint save on one rank, evaluation).
TIMEOUT = timedelta(minutes=30)


def resumable(run: Path) -> str:
    """One sentence on what a failed run left: its newest complete checkpoint, to resume from."""
    checkpoint = latest_checkpoint(run / "checkpoints")
    if checkpoint is None:
        return f"{run} has no complete checkpoint yet: start it again"
    return (f"the last checkpoint, {checkpoint}, is complete: continue with the same command and --resume "
            f"(instead of --overwrite)")


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
    agree: Agreement = field(default_factory=Agreement)  # every control-plane collective
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
        # The control plane on a group of its own, even on the CPU where the default group is gloo too:
        # its collectives then never queue among DDP's and FSDP's.
        control = dist.new_group(backend="gloo", timeout=TIMEOUT)
        world = cls(rank, world_size, local_rank, local_world_size, strategy, dev, backend, owns, control,
                    Agreement(rank, world_size, control))
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
        if compile and self.device.type == "cpu":
            # On the CPU the blocks, not the whole model: one graph for every block, the chunked
            # loss left eager, a cold compile that does not grow with depth (model/compiled.py).
            compile_blocks(model)
            return forward
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

    # ------------------------------------------------------------ collectives (agreement.py)
    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank; every rank must call it."""
        return self.agree.any(flag)

    def reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Sum or max of each figure over ranks; every rank must call it."""
        return self.agree.reduce(values, op)

    def barrier(self) -> None:
        self.agree.barrier()

    def on_main(self, action: Callable[[], Any]) -> None:
        """Run `action` on rank 0 while the others wait; an error on rank 0 is raised on every rank."""
        self.agree.on_main(action)
