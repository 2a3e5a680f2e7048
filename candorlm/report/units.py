"""Numbers as a person reads them: fractions as percent, energy in Wh, FLOPs with SI prefixes,
durations in s, min or h. report.json keeps the canonical units; the page and the markdown use
these."""

from __future__ import annotations

import math
from typing import Any

_SI = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def sig(x: float, digits: int = 3) -> str:
    """`x` to `digits` significant digits, without an exponent for everyday sizes."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{x:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent(fraction: float, digits: int = 3) -> str:
    pct = fraction * 100
    if abs(pct) >= 1000 or pct == 0:
        return f"{pct:,.0f}%"
    return f"{sig(pct, digits)}%"


def points(difference: float) -> str:
    """A difference of two fractions in percentage points, signed."""
    return f"{difference * 100:+.1f} points"


def duration(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{sig(seconds * 1e9)} ns"
    if seconds < 1e-3:
        return f"{sig(seconds * 1e6)} µs"
    if seconds < 1:
        return f"{sig(seconds * 1e3)} ms"
    if seconds < 120:
        return f"{sig(seconds)} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} days"


def scaled(x: float, scales: tuple[tuple[float, str], ...]) -> str:
    """`x` (in the first scale's unit) in the largest unit it reaches, e.g. 0.000123 kWh as 0.123 Wh."""
    for factor, name in scales:
        if abs(x) >= 0.1 * factor:
            return f"{sig(x / factor)} {name}"
    factor, name = scales[-1]
    return f"{sig(x / factor)} {name}"


def si(x: float, unit: str) -> str:
    for scale, prefix in _SI:
        if abs(x) >= scale:
            return f"{sig(x / scale)} {prefix}{unit}"
    return f"{sig(x)} {unit}"


def show(value: Any, unit: str = "") -> str:
    """A value and its unit as text for a person ('' unit: the value alone)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "[" + ", ".join(show(v, unit) for v in value) + "]"
    if isinstance(value, str) or not isinstance(value, (int, float)):
        return f"{value} {unit}".strip() if unit and not isinstance(value, str) else str(value)
    if unit in ("fraction", "probability", "%"):
        return percent(value / 100 if unit == "%" else value)
    if unit == "points":
        return points(value)
    if unit == "kWh":
        return scaled(value, ((1, "kWh"), (1e-3, "Wh"), (1e-6, "mWh"), (1e-9, "µWh")))
    if unit == "kg CO2e":
        return scaled(value, ((1, "kg CO2e"), (1e-3, "g CO2e"), (1e-6, "mg CO2e"), (1e-9, "µg CO2e")))
    if unit == "s":
        return duration(value)
    if unit in ("FLOP", "FLOP/s"):
        return si(value, unit)
    if unit == "bytes":
        return f"{value / 2**30:,.2f} GiB" if value >= 2**30 else f"{value / 2**20:,.0f} MiB"
    if unit in ("USD", "EUR", "CNY", "GBP"):
        if 0 < abs(value) < 1e-4:
            return f"< 0.0001 {unit}"
        return f"{sig(value, 2)} {unit}" if abs(value) < 0.01 else f"{value:,.2f} {unit}"
    if isinstance(value, int):
        text = f"{value:,}"
    elif value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        text = f"{value:.3g}"
    else:
        text = f"{value:.4g}"
    return f"{text} {unit}".strip()
