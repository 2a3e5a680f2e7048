"""The device's measured matmul peak, the denominator of MFU (model FLOPs utilization).

A short probe times large square matmuls in fp32 and bf16 and keeps the best rate. The answer
is cached per machine (CPU model or GPU name, thread count, torch version) in
~/.cache/candorlm/peak.json, so it is measured once, or again when the first probe ran on a
busy CPU, keeping the highest reading. A probe under load reads low: on a 2-vCPU virtual machine
here it read bf16 545 to 2,049 GFLOP/s at different hours, as the host's other tenants came and
went (the load average inside the machine does not see them), so MFU against the highest
reading is a lower bound on efficiency.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from candorlm.io.files import atomic_write_text

_THIS_PROCESS: dict[str, float] = {}
CACHE = Path(os.environ.get("CANDORLM_CACHE", Path.home() / ".cache" / "candorlm")) / "peak.json"


def device_name(device: torch.device) -> str:
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


def _busy(device: torch.device) -> bool:
    """Whether other work shares this CPU now (1-minute load average above half its cores), so a
    probe would read low. A peak is a maximum: other jobs can only lower what a probe sees."""
    if device.type != "cpu":
        return False
    try:
        return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    except OSError:
        return False


def measured_peak_flops(precision: str, device: torch.device | None = None, refresh: bool = False) -> float:
    """Best measured matmul FLOP/s for 'fp32' or 'bf16' on this device (cached).

    A probe taken while the CPU was busy is kept, marked as such, and probed again at the next
    call that finds the CPU quiet; the cache keeps the highest reading."""
    device = device or torch.device("cpu")
    key = f"{device_name(device)}|{precision}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    if key in _THIS_PROCESS and not refresh:
        return _THIS_PROCESS[key]  # MFU is asked for at every logged step: probe at most once per process
    cache = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    entry = cache.get(key)
    if isinstance(entry, (int, float)):  # the cache's first format: a bare number, load unknown
        entry = {"flops": float(entry), "busy": True}
    busy_now = _busy(device)
    if entry and not refresh and (not entry.get("busy") or busy_now):
        _THIS_PROCESS[key] = float(entry["flops"])
        return _THIS_PROCESS[key]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size = 8192 if device.type == "cuda" else 2048
    peak = max(_probe(dtype, device, size, 1.0) for _ in range(2))
    if entry and not refresh:
        peak = max(peak, float(entry["flops"]))
    cache[key] = {"flops": peak, "busy": busy_now}
    atomic_write_text(CACHE, json.dumps(cache, indent=2))  # parallel probes never leave half a file
    _THIS_PROCESS[key] = peak
    return peak
