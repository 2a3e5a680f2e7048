"""Where and in what precision to compute: device choice, bf16 support, autocast, threads."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import sys
import time
from typing import ContextManager

import torch

from candorlm.errors import CandorError

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CandorError("train.device = 'cuda' but no CUDA GPU is visible; use 'cpu' or 'auto'")
    return torch.device(name)


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where oneDNN runs
    bf16 matmuls several times faster than fp32. Probed once per process."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' becomes 'bf16' where the device computes bf16 fast, else 'fp32'."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_width_multiple() -> int:
    """What a variable-length training batch's width rounds up to: 16 under CPU bf16 autocast,
    else 1. Under CPU bf16 each new batch shape costs resident memory that is never given back
    (measured on the pinyin tagger, widths 2 to 66: 1.65 -> 2.51 GB in 150 steps, 5.5 GB after
    3,770, whether or not freed memory is kept and with oneDNN's primitive cache off; with widths
    rounded to 16, 1.49 -> 1.82 GB and flat after step 70, 3% slower a step). fp32 does not grow,
    and the padding would only cost it time."""
    on = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return 16 if on else 1


def physical_cores() -> int:
    """Physical cores available to this process (hyperthreads slow matmul-bound loops down)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cores = {line.split(":")[1].strip() for line in f if line.startswith("core id")}
        siblings = len(cores) or None
    except OSError:
        siblings = None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(available, siblings or available))


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same large buffers (logits, activations) every
    time; by default glibc serves each from fresh mmap'd pages, and the page faults cost as much
    as the arithmetic (measured: 7.2k -> 13.4k tokens/s for the tiny preset on 2 cores). The
    price is that the process keeps its peak memory until it exits.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 31))


def idle_cpus(sample_s: float = 0.1, stat: str = "/proc/stat") -> float | None:
    """How many CPUs' worth of time went idle over a short sample (None where /proc/stat is not)."""
    def read() -> tuple[int, int]:
        with open(stat, encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return values[3] + values[4], sum(values)

    try:
        idle0, total0 = read()
        time.sleep(sample_s)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads, or by default one per physical core that is not busy.

    PyTorch's OpenMP threads spin while they wait for each other at every operator; where another
    process holds a core, each operator waits for it, and two threads moved 2,883 tokens/s where
    one moved 4,954 (docs/training.md, "Threads"). So the default leaves busy cores out.
    """
    n = threads or physical_cores()
    if not threads and n > 1:
        idle = idle_cpus()
        if idle is not None and idle < n - 0.5:
            free = max(1, int(idle + 0.5))
            log.info("%d of %d cores are busy with other work: %d thread%s (--threads to choose)",
                     n - free, n, free, "" if free == 1 else "s")
            n = free
    torch.set_num_threads(n)
    return n


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch made on the CPU to `device`. For a GPU the copy goes through pinned (page-
    locked) memory and does not wait: the GPU copies while the host prepares the next batch."""
    if device.type == "cpu":
        return batch
    return batch.pin_memory().to(device, non_blocking=True)


def device_name(device: torch.device) -> str:
    """The device as the ledger names it: the GPU model, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
