"""Callbacks every training can attach to the loop (loop.py): the metrics file and the manifest.
The ledger's meter (ledger/training.py) and DP-SGD's record (privacy/dp.py) attach the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from candorlm.io.manifest import write_manifest
from candorlm.training.loop import Callback, Loop, LoopResult


class MetricsFile(Callback):
    """Appends each step's row to metrics.jsonl (rank 0 only: the others write to nowhere)."""

    def __init__(self, path: Path, mode: str = "a", extra: dict[str, Any] | None = None) -> None:
        self.path, self.mode = path, mode
        self.extra = extra or {}  # fields each row starts with after "step" (a fine-tuning's epoch)
        self._file: IO[str] | None = None

    def on_start(self, loop: Loop) -> None:
        self._file = open(self.path if loop.agree.is_main else os.devnull, self.mode, encoding="utf-8")

    def on_row(self, loop: Loop, row: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps({"step": loop.step, **self.extra, **row}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Manifest(Callback):
    """SHA256SUMS of the run, after every file is written (`candorlm verify RUN` checks it):
    attach it last."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_end(self, loop: Loop, result: LoopResult) -> None:
        loop.agree.on_main(lambda: write_manifest(self.run_dir))
