"""Integrity commands: `candorlm verify PATH` (a directory against its SHA256SUMS, an encrypted
file against its key) and `candorlm backup SRC DEST` (a copy proven to match, file by file).
The manifest itself lives in the bottom layer, `candorlm.io.manifest`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from candorlm.errors import CandorError
from candorlm.io.files import swapped_into_place
from candorlm.io.manifest import MANIFEST_NAME, VerifyReport, manifest_files, verify_manifest, write_manifest
from candorlm.io.outputs import claim_dir, read_marker, write_marker
from candorlm.rundir import looks_like_old_run


def backup(src: str | Path, dest: str | Path, overwrite: bool = False) -> VerifyReport:
    """Copy a directory to dest and prove the copy is exact: the source is checked against its
    manifest (one is written first if it has none), then the copy against the same manifest."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise CandorError(f"not a directory: {src}")
    from candorlm.shards import looks_like_old_data  # (numpy and torch: only here)

    claim_dir(dest, "backup", overwrite=overwrite, inputs=[src], what="the destination",
              legacy=lambda d: looks_like_old_run(d) or looks_like_old_data(d))
    if (src / MANIFEST_NAME).is_file():
        verify_manifest(src, check_extra=False)
    else:
        write_manifest(src)
    with swapped_into_place(dest) as tmp:
        for file in manifest_files(src) + [src / MANIFEST_NAME]:
            target = tmp / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            with open(target, "rb") as f:
                os.fsync(f.fileno())
        report = verify_manifest(tmp)
        of = (read_marker(src) or {}).get("kind")
        write_marker(tmp, "backup", "candorlm backup", source=str(src), **({"of": of} if of else {}))
    report.root = dest
    return report


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
