"""Integrity commands: `candorlm verify PATH` (a directory against its SHA256SUMS, an encrypted
file against its key) and `candorlm backup SRC DEST` (a copy proven to match, file by file).
The manifest itself lives in the bottom layer, `candorlm.io.manifest`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from candorlm.errors import CandorError
from candorlm.io.files import TEMP_TAG, swapped_into_place
from candorlm.io.manifest import (MANIFEST_NAME, VerifyReport, hash_files, manifest_files, verify_manifest,
                                  write_manifest)
from candorlm.io.outputs import FILES_RECORD, MARKER, claim_dir, read_marker, write_marker
from candorlm.rundir import looks_like_old_run

log = logging.getLogger("candorlm")


def backup(src: str | Path, dest: str | Path, overwrite: bool = False) -> VerifyReport:
    """Copy a directory to dest and prove the copy is exact: the source is checked against its
    manifest (one is written first if it has none), then the copy against the same manifest."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise CandorError(f"not a directory: {src}")
    from candorlm.shards import looks_like_old_data  # (numpy and torch: only here)

    claim_dir(dest, "backup", overwrite=overwrite, inputs=[src], what="the destination",
              legacy=lambda d: looks_like_old_run(d) or looks_like_old_data(d), walked=True)
    has_manifest = (src / MANIFEST_NAME).is_file()
    if has_manifest:
        verify_manifest(src, check_extra=False)
    entries = None if has_manifest else hash_files(src)  # nothing is written into the source
    skipped = _hidden_entries(src)
    if skipped:
        log.warning("not copied: %d hidden entries in %s (%s); a backup holds the files its manifest covers",
                    len(skipped), src, ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
    with swapped_into_place(dest) as tmp:
        for file in manifest_files(src) + ([src / MANIFEST_NAME] if has_manifest else []):
            target = tmp / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            with open(target, "rb") as f:
                os.fsync(f.fileno())
        if not has_manifest:
            write_manifest(tmp, entries)  # the source's hashes, taken before the copy: the copy is checked against them
        report = verify_manifest(tmp)
        source = read_marker(src) or {}
        # a backup of a backup is a backup of what the first one copied
        of = source.get("of") if source.get("kind") == "backup" else source.get("kind")
        write_marker(tmp, "backup", "candorlm backup", source=str(src), **({"of": of} if of else {}))
    report.root = dest
    return report


def _hidden_entries(root: Path) -> list[str]:
    """The hidden files and folders under root that a manifest leaves out (the outermost of each,
    at any depth), but for candorlm's own marker, record and temporaries."""
    found = []
    for path in root.rglob(".*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts[:-1]):  # inside one already named
            continue
        if path.name not in (MARKER, FILES_RECORD) and TEMP_TAG not in path.name:
            found.append(rel.as_posix())
    return sorted(found)


def update_manifest(path: str | Path) -> Path:
    """`candorlm verify PATH --update`: a fresh SHA256SUMS for a folder candorlm made (its marker,
    or a run or data folder of an older candorlm), or a new one where the folder has none; a
    SHA256SUMS candorlm did not write (a download's checksums, say) is never replaced."""
    from candorlm.shards import looks_like_old_data  # (numpy and torch: only here)

    path = Path(path)
    if not path.is_dir():
        raise CandorError(f"not a directory: {path}")
    target = path.resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry
        home = None
    if target == Path(target.anchor) or target == home:
        raise CandorError(f"refusing to hash all of {path} into a SHA256SUMS; name the run or data folder itself")
    ours = read_marker(path) is not None or looks_like_old_run(path) or looks_like_old_data(path)
    if (path / MANIFEST_NAME).exists() and not ours:
        raise CandorError(f"{path} is not a folder candorlm made (no {MARKER} marker), and --update would replace "
                          f"its {MANIFEST_NAME}, which candorlm did not write; leave it as it is")
    return write_manifest(path)


def verify(path: str | Path, key=None, on_file: Callable[[int], None] | None = None) -> VerifyReport:
    """`candorlm verify`: a directory against its manifest; with a key, also decrypt (without
    keeping) every encrypted file in it, which authenticates each chunk. A single encrypted
    file is authenticated alone."""
    from candorlm.io.sealed import authenticate, is_encrypted
    from candorlm.io.sealedtree import open_tree, tree_format

    path = Path(path)
    if path.is_file():
        if not is_encrypted(path):
            raise CandorError(f"{path} is a plain file: verify checks a directory against its {MANIFEST_NAME}, "
                              f"or an encrypted file with its key")
        authenticate(path, key)
        report = VerifyReport(path, checked=1)
        return report
    if not path.is_dir():
        raise CandorError(f"not found: {path}")
    report = verify_manifest(path, on_file=on_file)
    if key is not None and tree_format(path) != "plain":  # the keyed manifest decides, not SHA256SUMS
        open_tree(path, key).check_all()
    if key is not None:
        for file in manifest_files(path):
            if is_encrypted(file):
                authenticate(file, key)
    return report
