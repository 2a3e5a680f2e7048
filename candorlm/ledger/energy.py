"""Energy a piece of work used, and how we know: a power meter where one is readable, else an estimate.

In order of preference:
1. `codecarbon`'s OfflineEmissionsTracker (no network; reads Intel/AMD RAPL counters, NVIDIA's
   NVML or Apple's powermetrics where it can, else its own CPU-load x TDP estimate and a RAM
   figure). It is told not to write files, not to take a lock file, and to log only errors.
2. RAPL counters read directly from /sys/class/powercap, when codecarbon is not installed.
3. An estimate: the device's rated power x wall time (stated as such).

Every reading carries `method`, a sentence that says which of these produced it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

RAPL = Path("/sys/class/powercap")
# Rated-power fallback: a busy server CPU core draws roughly 5-15 W; we take 10 W per core used.
CPU_WATTS_PER_CORE = 10.0
GPU_WATTS_DEFAULT = 400.0


@dataclass
class EnergyReading:
    kwh: float
    method: str
    node_wide: bool = False  # a machine-wide counter: processes sharing the machine all see the same energy


class EnergyMeter(Protocol):
    def stop(self) -> EnergyReading: ...


def _physical_gpu_id(device: torch.device) -> int | str:
    """NVML's id of a CUDA device (CUDA_VISIBLE_DEVICES renumbers what torch sees)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible):
        return int(visible[index]) if visible[index].isdigit() else visible[index]
    return index


class _CodeCarbon:
    def __init__(self, device: torch.device | None = None) -> None:
        # codecarbon configures its logger on import; quiet it after import, before the tracker exists.
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        # Only the GPU this process computes on: with one process per GPU, each counts its own.
        gpus = {"gpu_ids": [_physical_gpu_id(device)]} if device is not None and device.type == "cuda" else {}
        self.tracker = OfflineEmissionsTracker(
            country_iso_code="USA",  # only used for its own CO2 figure, which we do not use
            output_methods=[], allow_multiple_runs=True,  # no emissions.csv, no API, no lock file
            log_level="error", tracking_mode="process", measure_power_secs=15, **gpus,
        )
        self.tracker.start()

    def stop(self) -> EnergyReading:
        self.tracker.stop()
        data = self.tracker.final_emissions_data
        return EnergyReading(float(data.energy_consumed),
                             f"codecarbon {_codecarbon_version()} OfflineEmissionsTracker, process mode: "
                             f"{self._sources()}; mean power CPU {data.cpu_power:.1f} W, RAM {data.ram_power:.1f} W, "
                             f"GPU {data.gpu_power:.1f} W")

    def _sources(self) -> str:
        """How codecarbon measured each part (it keeps this in private attributes; read defensively)."""
        parts = []
        for hw in getattr(self.tracker, "_hardware", []):
            name, mode = type(hw).__name__, getattr(hw, "_mode", None)
            if name == "CPU" and mode in ("cpu_load", "constant"):
                parts.append(f"CPU estimated from its load x {getattr(hw, '_tdp', '?')} W TDP (no power counter readable)")
            elif name == "CPU":
                parts.append(f"CPU measured ({mode})")
            elif name == "RAM":
                parts.append("RAM estimated from its size (codecarbon's W-per-GB model)")
            elif name == "GPU":
                parts.append("GPU measured by NVML")
            else:
                parts.append(name)
        return ", ".join(parts) or "its default model"


def _codecarbon_version() -> str:
    try:
        from codecarbon import __version__
        return str(__version__)
    except ImportError:
        return "?"


def _rapl_files() -> list[Path]:
    """Package-level RAPL energy counters that this process may read (none inside most VMs)."""
    files = sorted(RAPL.glob("intel-rapl:[0-9]*/energy_uj"))
    readable = []
    for f in files:
        try:
            int(f.read_text())
            readable.append(f)
        except (OSError, ValueError):
            continue
    return readable


class _Rapl:
    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.start = [int(f.read_text()) for f in files]
        self.limits = [int((f.parent / "max_energy_range_uj").read_text()) for f in files]

    def stop(self) -> EnergyReading:
        total = 0
        for f, start, limit in zip(self.files, self.start, self.limits):
            end = int(f.read_text())
            total += end - start if end >= start else end + limit - start  # the counter wrapped
        return EnergyReading(total / 3.6e12, f"RAPL package energy counters ({len(self.files)} packages; "
                                             f"CPU packages only, not RAM or GPU)", node_wide=True)

    read = stop  # reading the counters stops nothing


class _RatedPower:
    def __init__(self, watts: float, what: str) -> None:
        self.watts, self.what = watts, what
        self.start = time.perf_counter()

    def stop(self) -> EnergyReading:
        hours = (time.perf_counter() - self.start) / 3600
        return EnergyReading(self.watts * hours / 1000,
                             f"estimate: rated power {self.watts:.0f} W ({self.what}) x wall time; no power meter readable")

    read = stop


def rated_watts(device: torch.device, threads: int | None) -> tuple[float, str]:
    if device.type == "cuda":
        return GPU_WATTS_DEFAULT, f"{GPU_WATTS_DEFAULT:.0f} W assumed for a data-centre GPU"
    cores = threads or torch.get_num_threads()
    return CPU_WATTS_PER_CORE * cores, f"{CPU_WATTS_PER_CORE:.0f} W per busy CPU core x {cores} cores, assumed"


def start_energy_meter(device: torch.device, threads: int | None = None, method: str = "auto") -> EnergyMeter:
    """Start measuring energy: method 'auto' (best available), 'codecarbon', 'rapl' or 'estimate'."""
    if method in ("auto", "codecarbon"):
        try:
            return _CodeCarbon(device)
        except ImportError:
            if method == "codecarbon":
                raise
    if method in ("auto", "rapl"):
        files = _rapl_files()
        if files:
            return _Rapl(files)
    return _RatedPower(*rated_watts(device, threads))
