"""The device's measured matmul peak, the denominator of MFU (model FLOPs utilization).

A short probe times large square matmuls in fp32 and bf16 and keeps the best rate. The answer
is cached per machine (CPU model or GPU name, thread count, torch version) in
~/.cache/candorlm/peak.json with whether any probe ran on a quiet machine.

A probe can only read low, never high: other work on the cores (another process here, or the
host's other tenants, seen as steal time) takes cycles from it. On a 2-vCPU virtual machine here
bf16 read 545 to 2,049 GFLOP/s at different hours, and a fresh-clone demo probed beside other
work read ~200 where a quiet probe that hour read 787, so its MFU said 27.5% for about 7%. So:
- the probe runs before the work it measures (the meter asks for it at start), and is taken
  again, keeping the best, whenever the cached one ran beside other work and the CPU is quiet
  now (`candorlm report` asks too);
- while every probe of this machine ran beside other work, the peak is understated, so MFU
  against it is only an upper bound: `Peak.quiet` is False and the ledger and the report card
  say "at most" and why.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from candorlm.device import device_name  # noqa: F401 (imported from here by the meter and the estimate)
from candorlm.io.files import atomic_write_text

CACHE = Path(os.environ.get("CANDORLM_CACHE", Path.home() / ".cache" / "candorlm")) / "peak.json"
# Share of the machine's CPU time that other work used just before a probe, above which the
# probe counts as busy (one other busy process on a 2-core machine is 0.5).
BUSY_SHARE = 0.2
BUSY_REASON = ("every probe of this machine's peak ran while other work used the CPU, so the peak is "
               "understated and MFU is an upper bound; `candorlm report RUN` on a quiet machine probes again")


@dataclass(frozen=True)
class Peak:
    flops: float  # the best reading: the MFU denominator
    quiet: bool  # a probe on a quiet machine is among the readings
    key: str  # the cache key: device, precision, threads, torch version

    def status(self) -> str:
        return "quiet" if self.quiet else "busy"


_THIS_PROCESS: dict[str, Peak] = {}


def peak_key(precision: str, device: torch.device, threads: int | None = None) -> str:
    return (f"{device_name(device)}|{precision}|threads={threads or torch.get_num_threads()}"
            f"|torch={torch.__version__}")


def _probe(dtype: torch.dtype, device: torch.device, size: int, seconds: float) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def _cpu_times() -> list[int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return [int(x) for x in fields[1:9]] if fields and fields[0] == "cpu" else None


def _busy(device: torch.device, interval: float = 0.3) -> bool:
    """Whether other work uses this CPU now, so a probe would read low: the share of all cores'
    time that was not idle over `interval` (this process sleeps meanwhile; the host's other
    tenants count, as steal time). Without /proc/stat: the 1-minute load average."""
    if device.type != "cpu":
        return False
    before = _cpu_times()
    if before is None:
        try:
            return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
        except OSError:
            return False
    time.sleep(interval)
    after = _cpu_times() or before
    delta = [b - a for a, b in zip(before, after)]
    idle = delta[3] + delta[4]  # idle, iowait
    total = sum(delta)
    return total > 0 and (total - idle) / total > BUSY_SHARE


def _read_cache() -> dict:
    try:
        data = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    except (OSError, ValueError):  # a damaged cache is only a cache: probe again
        return {}
    return data if isinstance(data, dict) else {}


def _cached(entry: object, key: str) -> Peak | None:
    if isinstance(entry, (int, float)):  # the cache's first format: a bare number, load unknown
        return Peak(float(entry), False, key)
    if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)):
        quiet = entry["quiet"] if "quiet" in entry else not entry.get("busy", True)
        return Peak(float(entry["flops"]), bool(quiet), key)
    return None


def measured_peak(precision: str, device: torch.device | None = None, refresh: bool = False) -> Peak:
    """The best measured matmul FLOP/s for 'fp32' or 'bf16' on this device, and whether a quiet
    probe is among the readings. Probed when not cached, and again (keeping the best) when every
    cached probe was busy and the CPU is quiet now; at most once per process unless `refresh`."""
    device = device or torch.device("cpu")
    key = peak_key(precision, device)
    if key in _THIS_PROCESS and not refresh:
        return _THIS_PROCESS[key]  # MFU is asked for at every logged step
    cache = _read_cache()
    entry = None if refresh else _cached(cache.get(key), key)
    busy_now = _busy(device)
    if entry is None or (not entry.quiet and not busy_now):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        size = 8192 if device.type == "cuda" else 2048
        reading = max(_probe(dtype, device, size, 1.0) for _ in range(2))
        entry = Peak(max(reading, entry.flops if entry else 0.0), bool(entry and entry.quiet) or not busy_now, key)
        cache = _read_cache()  # another process may have written meanwhile: keep its best too
        other = _cached(cache.get(key), key)
        if other and not refresh:
            entry = Peak(max(entry.flops, other.flops), entry.quiet or other.quiet, key)
        cache[key] = {"flops": entry.flops, "quiet": entry.quiet}
        atomic_write_text(CACHE, json.dumps(cache, indent=2))  # parallel probes never leave half a file
    _THIS_PROCESS[key] = entry
    return entry


def measured_peak_flops(precision: str, device: torch.device | None = None, refresh: bool = False) -> float:
    """`measured_peak(...).flops`: the MFU denominator alone."""
    return measured_peak(precision, device, refresh).flops


def peak_again(key: str) -> Peak | None:
    """For a report made after the run: the peak of the probe `key` names, probed again now if it
    was busy and this CPU is quiet (with the run's thread count). None when `key` names another
    machine or torch, or a GPU."""
    try:
        name, precision, threads, version = key.split("|")
        n_threads = int(threads.removeprefix("threads="))
    except ValueError:
        return None
    cpu = torch.device("cpu")
    if name != device_name(cpu) or version != f"torch={torch.__version__}" or precision not in ("fp32", "bf16"):
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        return measured_peak(precision, cpu)
    finally:
        torch.set_num_threads(before)
