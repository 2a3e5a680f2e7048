"""The parts every report section is made of.

A section is a dict: id, title, status ("ok", "partial" or "missing"), a one-line summary,
figures (name, value, unit, source file; optionally how it was had, a one-sentence note and a
bound), tables (title, columns, rows; optionally each column's unit and a note saying what the
table shows and what follows), images (PNG paths, embedded later, each with a caption that says
the same), and `missing`: what is absent and the command that produces it. Values keep their
canonical units (fraction, kWh, FLOP); report.html and report.md show them as a person reads
them (percent, Wh, GFLOP: `candorlm.report.units`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from candorlm.errors import CandorError
from candorlm.io.files import read_json

log = logging.getLogger("candorlm")


def new_section(sid: str, title: str) -> dict[str, Any]:
    return {"id": sid, "title": title, "status": "ok", "summary": "", "figures": [], "tables": [], "images": [],
            "missing": []}


def fig(name: str, value: Any, unit: str, source: str, note: str = "", **extra: Any) -> dict[str, Any]:
    out = {"name": name, "value": value, "unit": unit, "source": source, **extra}
    if note:
        out["note"] = note
    return out


def table(title: str, columns: list[str], rows: list[list[Any]], units: list[str] | None = None,
          note: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"title": title, "columns": columns, "rows": rows}
    if units:
        out["units"] = units
    if note:
        out["note"] = note
    return out


def missing(section: dict[str, Any], what: str, command: str) -> None:
    section["missing"].append({"what": what, "command": command})


def finish(section: dict[str, Any]) -> dict[str, Any]:
    has_data = bool(section["figures"] or section["tables"] or section["images"])
    section["status"] = "missing" if not has_data else ("partial" if section["missing"] else "ok")
    if not has_data and not section["summary"]:
        section["summary"] = "no data yet: " + "; ".join(m["what"] for m in section["missing"])
    return section


def value(entry: dict[str, Any], key: str) -> Any:
    item = entry.get(key)
    return item.get("value") if isinstance(item, dict) else None


def load(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except CandorError as exc:  # a damaged file must not sink the whole report: it is named as missing
        log.warning("report: cannot read %s (%s)", path, exc)
        return None
