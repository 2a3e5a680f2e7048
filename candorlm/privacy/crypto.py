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
from candorlm.io.files import swapped_into_place
from candorlm.io.sealed import Key, decrypt_file, encrypt_file, is_encrypted
from candorlm.privacy.integrity import MANIFEST_NAME, verify_manifest, write_manifest


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
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def _transform_tree(src: Path, out: Path, overwrite: bool,
                    one: Callable[[Path, Path], int], on_file: Callable[[int], None] | None) -> list[Path]:
    if src.resolve() == out.resolve():
        raise CandorError("the output must differ from the input (write to a new path, then replace the old one)")
    if out.exists() and (out.is_file() or any(out.iterdir())):
        if not overwrite:
            raise CandorError(f"{out} already exists. Choose another output, or pass --overwrite.")
    if src.is_file():
        if out.is_dir():
            shutil.rmtree(out)
        one(src, out)
        if on_file:
            on_file(src.stat().st_size)
        return [out]
    if not src.is_dir():
        raise CandorError(f"not found: {src}")
    if (src / MANIFEST_NAME).is_file():
        verify_manifest(src, check_extra=False)  # never carry damage silently into the copy
    with swapped_into_place(out) as tmp:
        written = []
        for file in _files(src):
            target = tmp / file.relative_to(src)
            one(file, target)
            written.append(out / file.relative_to(src))
            if on_file:
                on_file(file.stat().st_size)
        write_manifest(tmp)
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
    return _transform_tree(src, out, overwrite, lambda a, b: encrypt_file(a, b, key), on_file)


def decrypt_path(src: str | Path, out: str | Path, key: Key, overwrite: bool = False,
                 on_file: Callable[[int], None] | None = None) -> list[Path]:
    """Decrypt a file or a tree encrypted by `encrypt_path`; plain files in the tree are copied."""
    def one(a: Path, b: Path) -> int:
        if is_encrypted(a):
            return decrypt_file(a, b, key)
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, b)
        return a.stat().st_size

    src = Path(src)
    if src.is_file() and not is_encrypted(src):
        raise CandorError(f"{src} is not encrypted (it does not start with candorlm's encryption header)")
    return _transform_tree(src, Path(out), overwrite, one, on_file)
