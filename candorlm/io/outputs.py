"""What candorlm may replace: output markers and the one check every `--overwrite` goes through.

Every directory candorlm creates carries a marker, `.candorlm.json`, naming its kind:

    {"kind": "run", "made_by": "candorlm train"}

kinds: `data` (prepare), `run` (train, finetune, import), `encrypted` (encrypt of a directory),
`backup`, `sweep`, `hf-export`. `--overwrite` replaces a target only when it is empty or carries
candorlm's marker of the same kind (or, for directories made before markers existed, passes the
caller's `legacy` test), and never `/`, the home directory, the working directory or any of its
ancestors (`.` and `..` among them), nor a path that is or holds one of the command's inputs (or
lies inside an input folder the command reads whole), nor one inside an encrypted tree;
symbolic links are resolved first. A refusal is one CandorError that says why and what to do.

A single file (scrub, encrypt or decrypt of one file, predict's output) cannot carry a marker
inside it, so the files candorlm writes are recorded in `.candorlm-files.json` beside them (kind,
size, mtime): `--overwrite` replaces a file only while it is exactly as candorlm left it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from candorlm.errors import CandorError
from candorlm.io.files import atomic_write_text, read_json, remove_stale_temps, write_json
from candorlm.io.sealed import tree_holding

log = logging.getLogger("candorlm")

MARKER = ".candorlm.json"
FILES_RECORD = ".candorlm-files.json"


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a directory candorlm made (None: none, or not a readable one)."""
    path = directory / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def write_marker(directory: Path, kind: str, made_by: str, **extra: Any) -> Path:
    """Mark `directory` as candorlm's output of `kind` (so a later --overwrite may replace it)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MARKER
    write_json(path, {"kind": kind, "made_by": made_by, **extra})  # no timestamp: outputs stay reproducible
    return path


def _forbidden(out: Path, inputs: Sequence[str | Path], walked: bool = False) -> str | None:
    """Why `out` may never be replaced, or None (walked: the command reads every file under its
    input folders, so an output inside one would be read back by the next run)."""
    target = out.resolve()
    cwd = Path.cwd().resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry
        home = None
    if target == Path(target.anchor):
        return "is the filesystem root"
    if home is not None and (target == home or target in home.parents):
        return "is your home directory" if target == home else "holds your home directory"
    if target == cwd:
        return "is the working directory"
    if target in cwd.parents:
        return "holds the working directory"
    tree = tree_holding(target)
    if tree is not None:
        return f"lies inside the encrypted tree {tree}"
    for given in inputs:
        source = Path(given).resolve()
        if source == target:
            return f"is the input {given}"
        if target in source.parents:
            return f"holds the input {given}"
        if walked and source in target.parents and source.is_dir():
            return f"lies inside the input folder {given}, whose every file is read: the next run would read it back"
    return None


def _unreachable(out: Path) -> str | None:
    """Why `out` cannot be created (checked before any work, so the work is not wasted), or None."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so {out} cannot be made there"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write in {parent} (permission denied)"
    return None


def _refuse(out: Path, why: str, what: str) -> CandorError:
    verb = "replace" if out.exists() or out.is_symlink() else "write"
    return CandorError(f"refusing to {verb} {out}: it {why}. Choose a new path for {what}")


def refuse_unreachable(out: Path, what: str = "--out") -> None:
    """Raise CandorError, before any work, when `out` cannot be created where it is named."""
    blocked = _unreachable(out)
    if blocked:
        raise CandorError(f"{blocked}. Choose another path for {what}")


def _inputs(inputs: Sequence[str | Path]) -> list[str | Path]:
    # builtin:NAME corpora are not paths
    return [i for i in inputs if not str(i).startswith("builtin:")]


def claim_dir(out: Path, kind: str, *, overwrite: bool, inputs: Sequence[str | Path] = (),
              legacy: Callable[[Path], bool] | None = None, what: str = "--out", walked: bool = False,
              foreign: Callable[[Path], list[str]] | None = None) -> bool:
    """May a directory of `kind` be written at `out`? Returns True when it will replace one
    (build the new one with `swapped_into_place`); raises a CandorError when it may not.
    walked: the command reads every file under its input folders (see `_forbidden`). foreign:
    the entries of a marked directory that candorlm did not write (someone may keep notes in a
    run); replacing would delete them, so any there is a refusal."""
    out = Path(out)
    if out.parent.is_dir():
        remove_stale_temps(out.parent)
    why = _forbidden(out, _inputs(inputs), walked)
    if why:
        raise _refuse(out, why, what)
    if not out.exists() and not out.is_symlink():
        refuse_unreachable(out, what)
        return False
    if out.is_symlink():
        raise _refuse(out, "is a symbolic link (candorlm replaces only what it wrote, and a link is not that)", what)
    if not out.is_dir():
        raise CandorError(f"{out} is a file, not a directory. Choose a new path for {what}")
    if not any(out.iterdir()):
        return True
    if not overwrite:
        raise CandorError(f"{out} already exists and is not empty. Choose another {what}, or pass --overwrite "
                          f"to replace it")
    marker = read_marker(out)
    if marker is not None:
        if marker["kind"] != kind:
            raise _refuse(out, f"holds candorlm {marker['kind']} output, not {kind}", what)
        theirs = [name for name in (foreign(out) if foreign else []) if name not in _record(out)]
        if theirs:
            listed = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
            raise CandorError(f"refusing to replace {out}: it holds files candorlm did not write there ({listed}), "
                              f"which --overwrite would delete. Move them out first, or choose a new path for {what}")
        return True
    if legacy is not None and legacy(out):
        log.info("%s has no %s marker; replacing it as %s written by an older candorlm", out, MARKER, kind)
        return True
    raise _refuse(out, f"was not written by candorlm (it has no {MARKER} marker of kind '{kind}'), and "
                       f"--overwrite replaces only candorlm's own output", what)


def claim_folder(out: Path, kind: str, made_by: str, *, legacy: Callable[[Path], bool] | None = None,
                 what: str = "--out") -> None:
    """For a command that writes its own named files into a folder and may be run into it again
    (explain): `out` must be new, empty, or hold that command's earlier output (its marker of `kind`,
    or `legacy`); anything else may hold the user's files of the same names, so it is refused.
    Creates nothing: the command makes the folder with `write_marker` once its inputs have loaded."""
    out = Path(out)
    if out.is_symlink():
        raise _refuse(out, "is a symbolic link (candorlm writes into folders it made, and a link is not that)", what)
    if out.exists() and not out.is_dir():
        raise CandorError(f"{out} is a file, not a folder. Choose a new path for {what}")
    if out.is_dir() and any(out.iterdir()):
        marker = read_marker(out)
        if marker is not None and marker["kind"] != kind:
            raise _refuse(out, f"holds candorlm {marker['kind']} output, not {kind}", what)
        if marker is None and not (legacy is not None and legacy(out)):
            raise CandorError(f"{out} already holds files candorlm did not write there, and {made_by} would write "
                              f"files of its own names into it. Choose a new or empty folder for {what}")


def _record(directory: Path) -> dict[str, Any]:
    path = directory / FILES_RECORD
    try:
        record = read_json(path) if path.is_file() else {}
    except CandorError:
        record = {}
    return record if isinstance(record, dict) else {}


def record_file(path: Path, kind: str, made_by: str) -> None:
    """Note in the file's directory that candorlm wrote `path` just now (so --overwrite may replace it)."""
    record = _record(path.parent)
    st = path.stat()
    record[path.name] = {"kind": kind, "made_by": made_by, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    write_json(path.parent / FILES_RECORD, record)


def write_owned_text(path: Path, text: str, kind: str, made_by: str) -> None:
    """Write a file `claim_file` allowed (atomically: an interruption leaves the old file or none,
    never half) and record it as candorlm's, so a later --overwrite may replace it."""
    atomic_write_text(path, text)
    record_file(path, kind, made_by)


def _written_by_candorlm(path: Path, kind: str) -> bool:
    entry = _record(path.parent).get(path.name)
    if not isinstance(entry, dict) or entry.get("kind") != kind:
        return False
    st = path.stat()
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def claim_file(out: Path, kind: str, *, overwrite: bool, inputs: Sequence[str | Path] = (),
               what: str = "--out", walked: bool = False) -> bool:
    """`claim_dir` for a single output file; True when it will replace one (write it with
    `atomic_output`, then `record_file`)."""
    out = Path(out)
    if out.parent.is_dir():
        remove_stale_temps(out.parent)
    why = _forbidden(out, _inputs(inputs), walked)
    if why:
        raise _refuse(out, why, what)
    if not out.exists() and not out.is_symlink():
        refuse_unreachable(out, what)
        return False
    if out.is_dir() and not out.is_symlink():
        raise CandorError(f"{out} is a directory; {what} names the one file to write. Choose a file name")
    if not overwrite:
        raise CandorError(f"{out} already exists. Choose another {what}, or pass --overwrite to replace it")
    if out.is_symlink():
        raise _refuse(out, "is a symbolic link (candorlm replaces only what it wrote, and a link is not that)", what)
    if not _written_by_candorlm(out, kind):
        raise _refuse(out, f"was not written by candorlm as {kind} output, or was changed since (see {FILES_RECORD} "
                           f"beside it), and --overwrite replaces only candorlm's own output", what)
    return True
