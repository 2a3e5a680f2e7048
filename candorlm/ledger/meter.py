"""The meter: what a piece of work (training, evaluation, generation) cost while it ran.

A Meter is started before the work and finished after it; in between the caller counts tokens
and FLOPs. It reports wall time, tokens/s, achieved FLOP/s and MFU against the device's measured
matmul peak, peak memory, energy, money and CO2. Every figure is a `{"value", "unit", "method"}`
record, so a reader of ledger.json knows how each number was obtained.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

from candorlm.ledger.energy import EnergyMeter, EnergyReading, start_energy_meter
from candorlm.ledger.hardware import BUSY_REASON, device_name, measured_peak

# A round world-average figure: the IEA's 2019 global average (475 g CO2 per kWh), the one
# codecarbon also falls back to. Set your grid's with ledger.grid_kg_co2_per_kwh.
DEFAULT_GRID_KG_PER_KWH = 0.475
# Price of one device-hour when none is configured: roughly what clouds charge for a small CPU
# VM and for one rented GPU of each kind (USD, 2024-2025 on-demand list prices, rounded).
DEFAULT_PRICE_PER_HOUR = {"cpu": 0.10, "cuda": 2.50}


def figure(value: Any, unit: str, method: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "method": method}


@dataclass
class Prices:
    """What a device-hour costs and how dirty the grid is; None means the defaults above."""

    price_per_hour: float | None = None
    currency: str = "USD"
    grid_kg_co2_per_kwh: float | None = None

    def hourly(self, device: torch.device) -> tuple[float, str]:
        if self.price_per_hour is not None:
            return self.price_per_hour, f"configured price {self.price_per_hour} {self.currency} per device-hour"
        price = DEFAULT_PRICE_PER_HOUR["cuda" if device.type == "cuda" else "cpu"]
        return price, f"default price {price} {self.currency} per device-hour (set ledger.price_per_hour)"

    def grid(self) -> tuple[float, str]:
        if self.grid_kg_co2_per_kwh is not None:
            return self.grid_kg_co2_per_kwh, f"configured grid intensity {self.grid_kg_co2_per_kwh} kg CO2e/kWh"
        return DEFAULT_GRID_KG_PER_KWH, (f"world-average grid intensity {DEFAULT_GRID_KG_PER_KWH} kg CO2e/kWh "
                                         f"(IEA 2019; set ledger.grid_kg_co2_per_kwh)")


def peak_figure(precision: str, device: torch.device, override_tflops: float | None = None) -> dict[str, Any]:
    """The MFU denominator as a ledger figure: the measured matmul peak (cached per machine), or a
    given one. `probe` says which: "quiet" (a probe on a quiet machine is among the readings),
    "busy" (every probe ran beside other work: understated) or "given"; `probe_key` lets a later
    report probe the same device again."""
    if override_tflops:
        return dict(figure(override_tflops * 1e12, "FLOP/s", f"given peak {override_tflops} TFLOP/s (--peak-tflops)"),
                    probe="given")
    peak = measured_peak(precision, device)
    how = ("a probe on a quiet CPU is among the readings" if peak.quiet
           else "every probe ran while other work used the CPU: understated")
    return dict(figure(round(peak.flops), "FLOP/s", f"measured {precision} matmul peak of {device_name(device)} at "
                       f"{torch.get_num_threads()} threads (candorlm.ledger.hardware probe, cached; {how})"),
                probe=peak.status(), probe_key=peak.key)


def mfu_figure(achieved_flops_per_s: float, peak: dict[str, Any], how: str = "achieved FLOP/s / peak FLOP/s") -> dict[str, Any]:
    """MFU against a peak figure; an upper bound ("bound": "upper", and why) when that peak was
    probed only beside other work."""
    value = round(achieved_flops_per_s / peak["value"], 6) if peak.get("value") else None
    out = figure(value, "fraction", how)
    if peak.get("probe") == "busy":
        out.update(bound="upper", method=f"{how}; at most this: {BUSY_REASON}")
    return out


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated (tensors on the GPU)"
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 1 << 40 else 1024
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "peak resident set size of the process (getrusage ru_maxrss): everything the process held, "
            "framework included")


class Meter:
    """Measures one piece of work. Call `count(tokens, flops)` as it goes, `finish()` at the end."""

    def __init__(self, kind: str, device: torch.device, precision: str, *, threads: int | None = None,
                 prices: Prices | None = None, peak_tflops: float | None = None, energy: str = "auto"):
        self.kind, self.device, self.precision, self.threads = kind, device, precision, threads
        self.prices = prices or Prices()
        self.peak_tflops = peak_tflops
        self.energy_method = energy
        self.tokens = 0
        self.flops = 0.0
        self.busy_s = 0.0  # time inside the counted work, when the caller measures it apart
        self.energy_node_wide = False  # the energy reading covers the whole machine (RAPL), not this process
        self._energy: EnergyMeter | None = None
        self._start = 0.0
        self._peak: dict[str, Any] | None = None

    def start(self) -> "Meter":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._energy = start_energy_meter(self.device, self.threads, self.energy_method)
        self._start = time.perf_counter()
        return self

    def count(self, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops

    def peak(self) -> dict[str, Any]:
        """The peak figure (probed at most once per process; TrainingMeter asks before the work starts)."""
        if self._peak is None:
            self._peak = peak_figure(self.precision, self.device, self.peak_tflops)
        return self._peak

    def use_peak(self, peak: dict[str, Any]) -> None:
        """Take a peak figure measured elsewhere (another rank's probe of the same device)."""
        self._peak = peak

    def mfu(self, flops_per_s: float) -> float:
        return flops_per_s / self.peak()["value"]

    def finish(self, flops_method: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ledger entry for the work: every figure with its unit and method."""
        return self._entry(self._energy.stop() if self._energy else None, flops_method, extra)

    def snapshot(self, flops_method: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The entry for the work so far, the meter still running (a training run records one at
        each log interval, so a process killed with -9 leaves its session in the ledger). An
        energy meter that can only be read by stopping it (codecarbon) gives no energy here."""
        read = getattr(self._energy, "read", None)
        return self._entry(read() if read else None, flops_method, extra)

    def _entry(self, reading: EnergyReading | None, flops_method: str, extra: dict[str, Any] | None) -> dict[str, Any]:
        wall = time.perf_counter() - self._start
        busy = self.busy_s or wall
        self.energy_node_wide = bool(reading and reading.node_wide)
        peak = self.peak()
        memory, memory_method = peak_memory_bytes(self.device)
        price, price_method = self.prices.hourly(self.device)
        grid, grid_method = self.prices.grid()
        achieved = self.flops / busy if busy > 0 else 0.0
        entry: dict[str, Any] = {
            "device": figure(device_name(self.device), "", f"{self.device.type}, {self.threads or torch.get_num_threads()} threads"),
            "precision": figure(self.precision, "", "the run's resolved precision"),
            "wall_time": figure(round(wall, 3), "s", "time.perf_counter around the whole piece of work"),
            "busy_time": figure(round(busy, 3), "s", "time inside the counted steps (evaluation and saving excluded)"
                                if self.busy_s else "same as wall time"),
            "tokens": figure(self.tokens, "tokens", "counted as processed"),
            "tokens_per_s": figure(round(self.tokens / busy, 1) if busy > 0 else 0.0, "tokens/s", "tokens / busy time"),
            "flops": figure(float(self.flops), "FLOP", flops_method),
            "achieved_flops_per_s": figure(round(achieved), "FLOP/s", "flops / busy time"),
            "peak_flops_per_s": peak,
            "mfu": mfu_figure(achieved, peak),
            "peak_memory": figure(memory, "bytes", memory_method),
        }
        if reading is not None:
            entry["energy"] = figure(reading.kwh, "kWh", reading.method)
            entry["co2"] = figure(reading.kwh * grid, "kg CO2e", f"energy x {grid_method}")
        entry["cost"] = figure(round(wall / 3600 * price, 6), self.prices.currency, f"wall time in hours x {price_method}")
        if extra:
            entry.update(extra)
        return entry
