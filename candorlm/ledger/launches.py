"""When a GPU waits on its host: the kernel-launch floor of a training step.

On a GPU, eager PyTorch launches about one kernel per operator, and each launch costs the host
several microseconds. A small model's operators finish faster than that, so its step takes at
least (operators per step) x (launch cost), however fast the GPU's arithmetic: a 1.9M-parameter
model at an assumed 40% MFU would look 10-40 times faster than it can run. The estimate takes
the longer of the two and says which one set the time.

The operator count is measured, not assumed: one training step of the very model (forward,
backward, optimizer step) is traced on PyTorch's meta device, which runs no arithmetic and holds
no memory, counting every operator that is not a view. The launch cost is an assumption
(`KERNEL_LAUNCH_S`, typical of eager PyTorch on CUDA), stated wherever it is used.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from candorlm.config import ModelConfig

KERNEL_LAUNCH_S = 5e-6  # host time per kernel launch in eager PyTorch on CUDA: an assumption
# Counted: a decoder block's training step runs about 250 operators (tiny: 1,036 for 4 layers with
# the embedding, loss and AdamW). Above this per layer no model of ours goes, so a step whose FLOPs
# take longer than this many launches is known not to be launch-bound without counting.
MAX_OPERATORS_PER_LAYER = 400


class _Counter(TorchDispatchMode):
    """Counts the operators that run (views only relabel memory: no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.operators = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if not any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns):
            self.operators += 1
        return func(*args, **(kwargs or {}))


@lru_cache(maxsize=32)
def _count(cfg_json: str, batch: int, seq: int) -> int:
    from candorlm.model import DecoderLM, EncoderLM

    cfg = ModelConfig.model_validate_json(cfg_json)
    with torch.device("meta"):
        model = EncoderLM(cfg) if cfg.arch == "encoder" else DecoderLM(cfg)
    # foreach AdamW: the meta device has no fused kernel; on a GPU the fused one launches fewer
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    x = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    counter = _Counter()
    with counter:
        loss = model(x, targets=x)
        loss.backward()
        optimizer.step()
    return counter.operators


def operators_per_step(cfg: ModelConfig, batch: int, seq: int) -> int | None:
    """Operators one training step of `cfg` runs (forward, backward, AdamW), counted on the meta
    device; None when the model cannot be traced there (its step is then not bounded here)."""
    if cfg.arch not in ("decoder", "encoder"):
        return None
    try:
        return _count(cfg.model_dump_json(), batch, seq)
    except Exception:  # noqa: BLE001 (an operator without a meta kernel: no floor rather than no estimate)
        return None


def launch_floor_s(cfg: ModelConfig, batch: int, seq: int) -> tuple[float, int] | None:
    """(seconds per step the launches take at least, operators per step), or None."""
    ops = operators_per_step(cfg, batch, seq)
    return None if ops is None else (ops * KERNEL_LAUNCH_S, ops)
