"""Encryption at rest, the commands: key files (`candorlm keygen`), and `candorlm encrypt` /
`candorlm decrypt` of a file or a whole tree (corpus, data directory, run directory).

The file format, the key types and the ambient key that every reader uses live in the bottom
layer, `candorlm.io.sealed`; this module builds on them.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from candorlm.errors import CandorError
from candorlm.io.files import TEMP_TAG, swapped_into_place
from candorlm.io.manifest import MANIFEST_NAME, verify_manifest, write_manifest
from candorlm.io.outputs import FILES_RECORD, MARKER, claim_dir, claim_file, read_marker, record_file, write_marker
from candorlm.io.sealed import Key, decrypt_file, encrypt_file, is_encrypted
from candorlm.rundir import looks_like_old_run


def generate_key() -> bytes:
    return secrets.token_bytes(32)


def write_key_file(path: str | Path, overwrite: bool = False) -> Path:
    """A new random key as 64 hex digits in a file only its owner can read."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CandorError(f"{path} already exists; refusing to overwrite a key (data encrypted with it would be lost)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(generate_key().hex() + "\n")
    return path


def _files(root: Path) -> list[Path]:
    """What a tree's copy carries: every file but its manifest, candorlm's marker and records,
    and candorlm's temporaries (the copy gets its own)."""
    skip = {MANIFEST_NAME, MARKER, FILES_RECORD}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in skip and TEMP_TAG not in p.name)


def _legacy(kind: str) -> Callable[[Path], bool] | None:
    """How to recognise a tree of `kind` written before candorlm marked its outputs."""
    if kind == "encrypted":
        return lambda d: bool(_files(d)) and all(is_encrypted(f) for f in _files(d))
    if kind == "data":
        from candorlm.shards import looks_like_old_data  # (numpy and torch: only here)

        return looks_like_old_data
    return looks_like_old_run if kind == "run" else None


def _transform_tree(src: Path, out: Path, overwrite: bool, one: Callable[[Path, Path], int],
                    on_file: Callable[[int], None] | None, kind: str, file_kind: str, command: str,
                    **marker: str) -> list[Path]:
    """Write `one(file, target)` for every file of src into the tree (or file) `out`, of `kind`."""
    if src.resolve() == out.resolve():
        raise CandorError("the output must differ from the input (write to a new path, then replace the old one)")
    if src.is_file():
        claim_file(out, file_kind, overwrite=overwrite, inputs=[src])
        one(src, out)
        record_file(out, file_kind, command)
        if on_file:
            on_file(src.stat().st_size)
        return [out]
    if not src.is_dir():
        raise CandorError(f"not found: {src}")
    claim_dir(out, kind, overwrite=overwrite, inputs=[src], legacy=_legacy(kind))
    if (src / MANIFEST_NAME).is_file():
        verify_manifest(src, check_extra=False)  # never carry damage silently into the copy
    with swapped_into_place(out, purpose=command.split()[-1]) as tmp:
        written = []
        for file in _files(src):
            target = tmp / file.relative_to(src)
            one(file, target)
            written.append(out / file.relative_to(src))
            if on_file:
                on_file(file.stat().st_size)
        write_manifest(tmp)
        write_marker(tmp, kind, command, **marker)
    return written


def encrypt_path(src: str | Path, out: str | Path, key: Key, overwrite: bool = False,
                 on_file: Callable[[int], None] | None = None) -> list[Path]:
    """Encrypt a file, or every file of a directory tree (corpus, data directory, run directory)
    into a mirror tree with the same names and a fresh SHA256SUMS of the encrypted files, which
    anyone can verify without the key."""
    src, out = Path(src), Path(out)
    if src.is_dir():
        already = [f for f in _files(src) if is_encrypted(f)]
        if already:
            raise CandorError(f"{already[0]} is already encrypted; decrypt {src} first or encrypt only plain files")
    of = (read_marker(src) or {}).get("kind") if src.is_dir() else None
    return _transform_tree(src, out, overwrite, lambda a, b: encrypt_file(a, b, key), on_file, "encrypted",
                           "encrypted", "candorlm encrypt", **({"of": of} if of else {}))


def decrypt_path(src: str | Path, out: str | Path, key: Key, overwrite: bool = False,
                 on_file: Callable[[int], None] | None = None) -> list[Path]:
    """Decrypt a file or a tree encrypted by `encrypt_path`; plain files in the tree are copied."""
    def one(a: Path, b: Path) -> int:
        if is_encrypted(a):
            return decrypt_file(a, b, key)
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, b)  # inside the tree being built: it appears only with the whole tree
        return a.stat().st_size

    src = Path(src)
    if src.is_file() and not is_encrypted(src):
        raise CandorError(f"{src} is not encrypted (it does not start with candorlm's encryption header)")
    kind = ((read_marker(src) or {}).get("of") if src.is_dir() else None) or "decrypted"
    return _transform_tree(src, Path(out), overwrite, one, on_file, kind, "decrypted", "candorlm decrypt")
