"""Writing files so that a crash, Ctrl-C or `kill` never leaves half of one, and reading them back.

    atomic_write_text(path, text)     a crash leaves the old content or the new, never half
    write_json / read_json            JSON state files (never pickle)
    sha256_file(path)                 hex digest of a file of any size
    with swapped_into_place(dest) as tmp:
        build the whole directory (or file) at tmp; it replaces dest only when complete

Everything is built in a temporary sibling whose name says it is candorlm's and which process
wrote it (`.NAME.candorlm-tmp-<host>-<pid>-<purpose>-<random>`). SIGINT and SIGTERM while a build
is in progress remove it (SIGTERM is turned into an exception in the main thread, then re-sent
once the temporary files are gone); what a `kill -9` leaves is removed by the next candorlm
command that writes into the same directory, once the writer's pid is dead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from candorlm.errors import CandorError

log = logging.getLogger("candorlm")

TEMP_TAG = ".candorlm-tmp-"
_TEMP = re.compile(r"^\.(?P<name>.+)\.candorlm-tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<purpose>[a-z]+)-[0-9a-z]+$")
# What a leftover held, for the message that reports its removal.
_HELD = {"decrypt": "partial plaintext (an interrupted decrypt)", "old": "previous version set aside by an "
         "interrupted --overwrite"}


# ---------------------------------------------------------------- temporary names and leftovers


def host_id() -> str:
    """Eight hex digits naming this machine, so a pid is only ever judged on its own host."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(dest: Path, purpose: str = "build", pid: int | None = None, host: str | None = None) -> Path:
    """A hidden sibling of `dest` that the stale sweep recognises as candorlm's, with the writer's pid."""
    if not purpose.isalpha() or not purpose.islower():
        raise ValueError(f"purpose must be lowercase letters, got {purpose!r}")
    token = secrets.token_hex(4) if pid is None else "0"  # a given pid: a name other processes can compute too
    pid = os.getpid() if pid is None else pid
    return dest.with_name(f".{dest.name}{TEMP_TAG}{host or host_id()}-{pid}-{purpose}-{token}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove candorlm's temporary entries in `directory` whose writer, on this host, is dead;
    say what each held. Others' files and live writers' temporaries are left alone."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    here = host_id()
    for path in entries:
        m = _TEMP.match(path.name)
        if not m or m["host"] != here or _pid_alive(int(m["pid"])):
            continue
        dest = directory / m["name"]
        if m["purpose"] in ("old", "replaced") and not dest.exists() and not dest.is_symlink():
            os.replace(path, dest)  # killed between setting the old one aside and putting the new one in place
            log.warning("found %s set aside by a candorlm command that was killed (pid %s); put it back as %s",
                        path, m["pid"], dest)
            continue
        if m["purpose"] == "replaced":  # whole, while what replaced it may not be (a training run): kept
            kept = keep_beside(path, dest)
            log.warning("found %s, which a candorlm command killed before its end (pid %s) was replacing; kept "
                        "whole as %s (delete it once you no longer need it)", dest, m["pid"], kept)
            continue
        _remove(path)
        if not path.exists():
            removed.append(path)
            held = _HELD.get(m["purpose"], "partial output")
            log.warning("found and removed %s: a %s left by a candorlm command that was killed (pid %s)",
                        path, held, m["pid"])
    return removed


class Terminated(BaseException):
    """SIGTERM arrived while a build was in progress: unwind (removing temporaries), then die of it."""


_guard_depth = 0


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While this block runs in the main thread, SIGTERM raises `Terminated` so that `finally` and
    `except` clauses remove temporary files; on the way out the process dies of SIGTERM as it
    would have. A handler someone else installed (the trainer's stop flag) is left in charge."""
    global _guard_depth
    main = threading.current_thread() is threading.main_thread()
    if not main or _guard_depth or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        _guard_depth += main
        try:
            yield
        finally:
            _guard_depth -= main
        return

    def handle(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handle)
    _guard_depth += 1
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the cleanup is done: die of the signal, exit status 143
        raise
    finally:
        _guard_depth -= 1
        if signal.getsignal(signal.SIGTERM) is handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _remove_despite_sigterm(path: Path) -> None:
    """Remove `path`; a SIGTERM during the removal lets it finish first (the removal is the cleanup;
    found by tests/test_chaos.py: a stopped `encrypt --overwrite` left the replaced tree set aside)."""
    try:
        _remove(path)
    except Terminated:
        _remove(path)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- single files


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it, a new file) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, purpose: str = "build") -> Iterator[Path]:
    """A temporary path to write a file at (for writers that take a file name); it becomes `path`
    (fsynced) only when the block completes. An error, Ctrl-C or SIGTERM leaves `path` as it was
    and no temporary behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_path(path, purpose)
    with terminate_cleanly():
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_output(path: Path, purpose: str = "build") -> Iterator[BinaryIO]:
    """`atomic_path`, opened for writing: a binary file that appears at `path` when the block completes."""
    with atomic_path(path, purpose) as tmp:
        # 0600 like mkstemp: a half-written file (decrypted plaintext, say) is never readable by others
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            yield f


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
    with atomic_output(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CandorError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CandorError(f"{path} is not valid JSON ({exc}); the file is damaged") from None


def require_private(path: Path, what: str = "file") -> None:
    """Refuse a secret file (a key file, serve's keys.json) that group or others may read or change,
    as ssh does with a private key: one line with the chmod that fixes it."""
    if os.name != "posix":  # Windows has no mode bits to judge; its ACLs are the user's to set
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        import shlex

        who = "group and others" if mode & 0o070 and mode & 0o007 else "others" if mode & 0o007 else "its group"
        raise CandorError(f"{what} {path} can be read or changed by {who} (mode {mode:03o}); make it private with "
                          f"`chmod 600 {shlex.quote(str(path))}` and try again")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (files of any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- whole directories


def set_aside(dest: Path, purpose: str = "old") -> Path:
    """Rename `dest` to a hidden temporary sibling; returns the new name. Purpose `old`: the
    replacement is complete before it goes in place, so a leftover is removed once the new one is
    there; `replaced`: the replacement may stop half-way (training), so a leftover is kept."""
    old = temp_path(dest, purpose)
    os.replace(dest, old)
    return old


def keep_beside(path: Path, dest: Path) -> Path:
    """Move `path` to a visible sibling of `dest`, `NAME.replaced` (or `.replaced-2`, ...): kept for
    the user to keep or delete, under a name no candorlm command removes."""
    keep = dest.with_name(f"{dest.name}.replaced")
    n = 1
    while keep.exists() or keep.is_symlink():
        n += 1
        keep = dest.with_name(f"{dest.name}.replaced-{n}")
    os.replace(path, keep)
    return keep


@contextlib.contextmanager
def swapped_into_place(dest: Path, purpose: str = "build") -> Iterator[Path]:
    """Build a directory in a temporary sibling of `dest`, then rename it into place: a failure,
    Ctrl-C or SIGTERM leaves `dest` as it was and nothing half-written.

        with swapped_into_place(out) as tmp:
            write everything under tmp

    An existing `dest` is first renamed aside and removed only once the new one is in place.
    Whether `dest` may be replaced at all is the caller's question (`candorlm.io.outputs`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent)
    tmp = temp_path(dest, purpose)
    with terminate_cleanly():
        try:
            tmp.mkdir()
            yield tmp
            fsync_dir(tmp)
            old = set_aside(dest) if dest.exists() or dest.is_symlink() else None
            try:
                os.replace(tmp, dest)
            except BaseException:
                if old is not None:
                    os.replace(old, dest)
                raise
            try:
                fsync_dir(dest.parent)
            finally:
                if old is not None:  # the new one is in place: the old one goes even if SIGTERM came now
                    _remove_despite_sigterm(old)
        except BaseException:
            _remove(tmp)
            raise
