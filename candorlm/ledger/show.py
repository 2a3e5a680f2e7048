"""Printing an estimate for people: a table of what a run will cost and how each figure was had."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from candorlm.ledger.estimate import Estimate
from candorlm.progress import stdout_console


def _bytes(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:,.1f} s"
    if s < 7200:
        return f"{s / 60:,.1f} min"
    if s < 172800:
        return f"{s / 3600:,.1f} h"
    return f"{s / 86400:,.1f} days"


def print_estimate(est: Estimate, console: Console | None = None) -> None:
    console = console or stdout_console()
    table = Table(title=f"estimate: {est.params / 1e6:,.2f}M parameters on {est.hardware}", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("how", overflow="fold")
    table.add_row("tokens", f"{est.tokens:,}", f"{est.steps:,} steps of {est.batch_size} x {est.seq_len}")
    table.add_row("training FLOPs", f"{est.train_flops:.3g}", f"{est.flops_per_token:,} per token (6 N + attention)")
    table.add_row("evaluation FLOPs", f"{est.eval_flops:.3g}", "forward passes over the validation tokens")
    table.add_row("peak", f"{est.peak_flops_per_s / 1e12:,.2f} TFLOP/s", f"{est.precision}; {est.hardware_source}")
    table.add_row(f"MFU ({est.mfu_basis})", f"{est.mfu:.1%}", est.mfu_method)
    bound = est.mfu_basis == "launch-bound"
    table.add_row("time", ("at least " if bound else "") + _duration(est.seconds),
                  f"FLOPs / (peak x MFU): training {_duration(est.train_seconds)}, evaluation "
                  f"{_duration(est.eval_seconds)}" + ("; kernel launches set it (see MFU)" if bound else ""))
    for part, info in est.memory.items():
        table.add_row(f"memory: {part.replace('_', ' ')}", _bytes(info["bytes"]), info["how"])
    fits = "fits" if est.fits else "does NOT fit"
    table.add_row("peak memory", _bytes(est.peak_memory_bytes), f"{fits} in {_bytes(est.device_memory_bytes)}")
    table.add_row("energy", f"{est.energy_kwh:.4g} kWh", f"{est.watts:,.0f} W x time")
    table.add_row("money", f"{est.cost:,.4g} {est.currency}", f"{est.price_per_hour} {est.currency} per device-hour")
    table.add_row("CO2", f"{est.co2_kg:.4g} kg", f"energy x {est.grid_kg_co2_per_kwh} kg CO2e/kWh")
    console.print(table)
    for note in est.notes:
        console.print(f"note: {note}")


def print_budget(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or stdout_console()
    table = Table(title=f"compute-optimal for {result['compute_flops']:.3g} FLOPs on {result['hardware']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("how", overflow="fold")
    table.add_row("parameters", f"{result['params']:,.4g}", result["rule"])
    table.add_row("tokens", f"{result['tokens']:,.4g}", "20 tokens per parameter")
    table.add_row("time", _duration(result["seconds"]),
                  f"FLOPs / ({result['peak_flops_per_s'] / 1e12:,.0f} TFLOP/s bf16 x MFU {result['mfu']:.0%}, "
                  f"{result['mfu_method']})")
    table.add_row("memory (weights, grads, AdamW)", _bytes(result["peak_memory_bytes"]),
                  "16 bytes per parameter; activations not included")
    table.add_row("energy", f"{result['energy_kwh']:,.4g} kWh", "rated power x time")
    table.add_row("money", f"{result['cost']:,.4g} {result['currency']}", f"{result['price_per_hour']} per device-hour")
    table.add_row("CO2", f"{result['co2_kg']:,.4g} kg", f"energy x {result['grid_kg_co2_per_kwh']} kg CO2e/kWh")
    console.print(table)
