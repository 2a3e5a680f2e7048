"""ledger.json: what a run cost, kept in its run directory, and its table for `candorlm ledger`.

The file holds, for each kind of work (`train`, `evaluate`, `generate`), the list of sessions
that did it (a resumed training run has several) and their total. Each figure is a record
`{"value", "unit", "method"}`; totals say how they were combined from the sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from candorlm.errors import CandorError
from candorlm.io.files import read_json, write_json
from candorlm.ledger.meter import mfu_figure
from candorlm.rundir import RunDir, open_run

VERSION = 1
KINDS = ("train", "evaluate", "generate")
_SUMMED = ("wall_time", "busy_time", "device_time", "tokens", "flops", "energy", "co2", "cost")


def _value(entry: dict[str, Any], key: str) -> Any:
    item = entry.get(key)
    return item.get("value") if isinstance(item, dict) else None


def total(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the sessions' times, tokens, FLOPs, energy, CO2 and money; take the largest peak
    memory; recompute the rates from the sums."""
    last = sessions[-1]
    out: dict[str, Any] = {k: v for k, v in last.items() if k not in _SUMMED and k not in ("steps", "session")}
    n = len(sessions)
    how = "the one session" if n == 1 else f"sum over {n} sessions"
    spans = [_value(s, "steps") for s in sessions]
    if all(isinstance(v, list) and len(v) == 2 for v in spans):
        out["steps"] = {"value": sum(b - a for a, b in spans), "unit": "steps",
                        "method": f"{how}: optimizer steps trained (each session's last step - first step)"}
    for key in _SUMMED:
        values = [_value(s, key) for s in sessions]
        if any(v is None for v in values):
            continue
        methods = sorted({s[key]["method"] for s in sessions})
        out[key] = {"value": sum(values), "unit": last[key]["unit"],
                    "method": f"{how}: " + " | ".join(methods)}
    memories = [_value(s, "peak_memory") for s in sessions if _value(s, "peak_memory") is not None]
    if memories:
        out["peak_memory"] = dict(last["peak_memory"], value=max(memories))
    busy, tokens, flops = _value(out, "busy_time"), _value(out, "tokens"), _value(out, "flops")
    peak = last.get("peak_flops_per_s")
    if busy:
        out["tokens_per_s"] = {"value": round(tokens / busy, 1), "unit": "tokens/s", "method": f"{how}: tokens / busy time"}
        out["achieved_flops_per_s"] = {"value": round(flops / busy), "unit": "FLOP/s", "method": f"{how}: flops / busy time"}
        if isinstance(peak, dict) and peak.get("value"):
            out["mfu"] = mfu_figure(flops / busy, peak, "achieved FLOP/s / peak FLOP/s (the last session's peak)")
    return out


def read_ledger(run_dir: str | Path) -> dict[str, Any]:
    run = RunDir(Path(run_dir))
    if not run.ledger.is_file():
        return {"version": VERSION}
    data = read_json(run.ledger)
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise CandorError(f"{run.ledger} is not a candorlm ledger (version {VERSION}); delete it to start a new one")
    return data


def record(run_dir: str | Path, kind: str, session: dict[str, Any], replace_after_step: int | None = None) -> dict[str, Any]:
    """Add a session of `kind` to the run's ledger.json and recompute its total (see record_sessions)."""
    return record_sessions(run_dir, {kind: session}, replace_after_step)


def record_sessions(run_dir: str | Path, sessions: dict[str, dict[str, Any]],
                    replace_after_step: int | None = None) -> dict[str, Any]:
    """Add or update sessions (one per kind) in the run's ledger.json, recompute the totals, and
    write the file atomically, once.

    A session that carries a `session` id replaces the earlier record with that id: a training
    run rewrites its record at each log interval, so a kill -9 loses at most one interval.
    A resumed training run passes the step it resumed from: earlier sessions are cut back to it
    (their later steps were lost and are trained again; metrics.jsonl is truncated the same way),
    and those that started at or after it are dropped."""
    unknown = set(sessions) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown ledger kind {sorted(unknown)}; one of {KINDS}")
    data = read_ledger(run_dir)
    for kind, session in sessions.items():
        section = data.setdefault(kind, {"sessions": []})
        held = section["sessions"]
        ident = _value(session, "session")
        if ident is not None:
            held[:] = [s for s in held if _value(s, "session") != ident]
        if replace_after_step is not None:
            held[:] = [c for c in (_cut_back(s, replace_after_step) for s in held) if c is not None]
        held.append(session)
        section["total"] = total(held)
    write_json(RunDir(Path(run_dir)).ledger, data)
    return data


def _cut_back(session: dict[str, Any], step: int) -> dict[str, Any] | None:
    """A session as far as `step`: its summed figures scaled by the share of its steps kept (every
    step trains the same tokens), or None when it started at or after `step`."""
    span = _value(session, "steps")
    if not (isinstance(span, list) and len(span) == 2):
        return session
    first, last = span
    if last <= step:
        return session
    if first >= step:
        return None
    share = (step - first) / (last - first)
    out = dict(session, steps=dict(session["steps"], value=[first, step], method=session["steps"]["method"]
                                   + f"; cut back from step {last} to {step}, the checkpoint a later session resumed"))
    for key in _SUMMED:
        if isinstance(out.get(key), dict) and isinstance(out[key].get("value"), (int, float)):
            value = out[key]["value"] * share
            out[key] = dict(out[key], value=round(value) if isinstance(out[key]["value"], int) else value,
                            method=out[key]["method"] + f"; x {share:.4f}, the share of its steps kept")
    return out


def ledger(run_dir: str | Path) -> dict[str, Any]:
    """The run's ledger.json, read and checked."""
    run = open_run(run_dir)
    if not run.ledger.is_file():
        raise CandorError(f"{run.path} has no ledger.json yet (it is written when training stops or finishes)")
    return read_ledger(run.path)


def _fmt(key: str, item: dict[str, Any]) -> str:
    value, unit = item.get("value"), item.get("unit", "")
    if value is None:
        return "-"
    if isinstance(value, list):
        return " to ".join(str(v) for v in value)
    if isinstance(value, str):
        return value
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "fraction":
        return f"at most {value:.1%}" if item.get("bound") == "upper" else f"{value:.1%}"
    if unit in ("FLOP", "FLOP/s"):
        return f"{value:.3g} {unit}"
    if unit == "kWh":
        return f"{value:.4g} kWh"
    if unit == "kg CO2e":
        return f"{value * 1000:.4g} g CO2e"
    if unit == "s":
        return f"{value:,.1f} s"
    if isinstance(value, float):
        return f"{value:,.4g} {unit}".strip()
    return f"{value:,} {unit}".strip()


def ledger_table(data: dict[str, Any], verbose: bool = False) -> Table:
    """A table of each kind's totals: figure, value, and (verbose) how it was obtained."""
    table = Table(title="ledger", show_lines=False)
    table.add_column("work")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("method", overflow="fold")
    for kind in KINDS:
        if kind not in data:
            continue
        entry = data[kind]["total"]
        first = True
        for key, item in entry.items():
            if not isinstance(item, dict) or "value" not in item:
                continue
            method = item.get("method", "")
            table.add_row(kind if first else "", key.replace("_", " "), _fmt(key, item),
                          method if verbose else (method[:70] + "..." if len(method) > 73 else method))
            first = False
    return table
