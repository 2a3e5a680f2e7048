"""Progress bars for long loops: Rich on a terminal, quiet otherwise.

Library code calls `progress_bar(...)` and never prints; whether bars show is decided here:
on when stderr is a terminal, off under tests and pipes, and forced either way with
`CANDORLM_PROGRESS=1|0`.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Rich cuts what it prints to 80 columns when it cannot measure a terminal; a table printed into a
# pipe, a file or a CI log would lose its right side. There, lines are left whole instead.
UNBOUNDED = 1 << 14


def make_console(stderr: bool = False) -> Console:
    """A Rich console that fits the terminal, or prints whole when its stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else UNBOUNDED)


console = make_console(stderr=True)
# Log records are laid out across the console's whole width, so off a terminal they keep Rich's
# default; on one they share `console`, so that they print above a live progress bar.
log_console = console if sys.stderr.isatty() else Console(stderr=True)


def stdout_console() -> Console:
    """A console for results on stdout (tables a user may pipe or save)."""
    return make_console(stderr=False)


def enabled() -> bool:
    flag = os.environ.get("CANDORLM_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty()


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)


T = TypeVar("T")
_active: list[Progress] = []  # the live display, while one is shown (Rich allows one at a time)


@contextmanager
def progress_bar(description: str, total: float | None = None, unit: str = "") -> Iterator[_Bar]:
    """A bar with elapsed time and time left. Inside another bar (an evaluation within fine-tuning)
    it is a second line of the same display, removed when done."""
    if not enabled():
        yield _Bar(None, None)
        return
    if _active:
        outer = _active[-1]
        task = outer.add_task(description, total=total, status="")
        try:
            yield _Bar(outer, task)
        finally:
            outer.remove_task(task)
        return
    count = DownloadColumn() if unit == "B" else MofNCompleteColumn()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), count,
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")
        _active.append(progress)
        try:
            yield _Bar(progress, task)
        finally:
            _active.pop()


def batched(items: Sequence[T], size: int, description: str = "scoring") -> Iterator[Sequence[T]]:
    """`items` in slices of `size`, under a bar that counts items and shows the time left."""
    with progress_bar(description, total=len(items)) as bar:
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            yield chunk
            bar.advance(len(chunk))
