"""Which checkpoints a run has, and which it keeps: checkpoints/step-NNNNNN, newest last."""

from __future__ import annotations

import shutil
from pathlib import Path

from candorlm.errors import CandorError
from candorlm.io.files import read_json

STEP_PREFIX = "step-"


def retain(checkpoints: Path, keep_last: int, keep_best: bool) -> list[Path]:
    """Delete all checkpoints but the newest `keep_last` and, with keep_best, the one with the
    lowest validation loss (state.json's val_loss); returns those kept, oldest first."""
    found = list_checkpoints(checkpoints)
    keep = set(found[-keep_last:])
    if keep_best:
        best = best_checkpoint(checkpoints)
        if best is not None:
            keep.add(best)
    for old in found:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return [p for p in found if p in keep]


def best_checkpoint(checkpoints: Path) -> Path | None:
    """The complete checkpoint with the lowest recorded validation loss (None if none has one)."""
    scored = []
    for path in list_checkpoints(checkpoints):
        try:
            loss = read_json(path / "state.json").get("val_loss")
        except CandorError:
            continue  # unreadable state: not a candidate for best
        if isinstance(loss, (int, float)):
            scored.append((loss, path))
    return min(scored, key=lambda t: t[0])[1] if scored else None


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted saves are ignored)."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = list_checkpoints(checkpoints)
    return found[-1] if found else None
