"""Encryption at rest, the commands: key files (`candorlm keygen`), and `candorlm encrypt` /
`candorlm decrypt` of a file or a whole tree (corpus, data directory, run directory).

The file format, the key types and the ambient key that every reader uses live in the bottom
layer, `candorlm.io.sealed`; this module builds on them.
"""

from __future__ import annotations

import logging
import errno
import os
import secrets
from pathlib import Path
from typing import Callable

from candorlm.errors import CandorError
from candorlm.io.files import swapped_into_place
from candorlm.io.manifest import MANIFEST_NAME, verify_manifest, write_manifest
from candorlm.io.outputs import claim_dir, claim_file, read_marker, record_file, refuse_unreachable, write_marker
from candorlm.io.sealed import (TREE_MANIFEST, Key, decrypt_file, encrypt_file, is_encrypted, member_name,
                                old_format, plain_in_tree, read_header, tree_root)
from candorlm.io.sealedtree import open_tree, tree_files, tree_format, write_tree_manifest
from candorlm.rundir import looks_like_old_run

log = logging.getLogger("candorlm")


def generate_key() -> bytes:
    return secrets.token_bytes(32)


def write_key_file(path: str | Path, overwrite: bool = False) -> Path:
    """A new random key as 64 hex digits in a file only its owner can read."""
    path = Path(path)
    exists = CandorError(f"{path} already exists; refusing to overwrite a key (data encrypted with it would be lost)")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise exists
    refuse_unreachable(path, "-o")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: a file (or a link) that appears after the check is not overwritten either
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if overwrite else os.O_EXCL),
                     0o600)
    except FileExistsError:
        raise exists from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise CandorError(f"{path} is a symbolic link; a key is written only to a file of its own name") from None
    os.fchmod(fd, 0o600)  # an existing file (--overwrite) keeps its mode otherwise
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(generate_key().hex() + "\n")
    return path


# What a tree's copy carries: every file but its manifests, candorlm's marker and records, and
# candorlm's temporaries (the copy gets its own).
_files = tree_files


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
                    seal: Key | None = None, plain_sums: bool = True, **marker: str) -> list[Path]:
    """Write `one(file, target)` for every file of src into the tree (or file) `out`, of `kind`
    (seal: write the new tree's keyed manifest with this key; plain_sums: check src's SHA256SUMS)."""
    if src.resolve() == out.resolve():
        raise CandorError("the output must differ from the input (write to a new path, then replace the old one)")
    if src.is_file():
        claim_file(out, file_kind, overwrite=overwrite, inputs=[src], walked=True)
        one(src, out)
        record_file(out, file_kind, command)
        if on_file:
            on_file(src.stat().st_size)
        return [out]
    if not src.is_dir():
        raise CandorError(f"not found: {src}")
    claim_dir(out, kind, overwrite=overwrite, inputs=[src], legacy=_legacy(kind), walked=True)
    if plain_sums and (src / MANIFEST_NAME).is_file():
        verify_manifest(src, check_extra=False)  # never carry damage silently into the copy
    with swapped_into_place(out, purpose=command.split()[-1]) as tmp:
        written = []
        for file in _files(src):
            target = tmp / file.relative_to(src)
            one(file, target)
            written.append(out / file.relative_to(src))
            if on_file:
                on_file(file.stat().st_size)
        if seal is not None:
            write_tree_manifest(tmp, seal)  # before SHA256SUMS, which lists it too (for keyless backups)
        write_manifest(tmp)
        write_marker(tmp, kind, command, **marker)
    return written


def encrypt_path(src: str | Path, out: str | Path, key: Key, overwrite: bool = False,
                 on_file: Callable[[int], None] | None = None) -> list[Path]:
    """Encrypt a file, or every file of a directory tree (corpus, data directory, run directory)
    into a mirror tree with the same names: each file bound to its path in the tree, a keyed
    manifest (CANDORLM-SEALED.json) that vouches for the whole set, and a fresh SHA256SUMS of
    the encrypted files, which anyone can check without the key (a backup's copy, say)."""
    src, out = Path(src), Path(out)
    if src.is_dir():
        already = [f for f in _files(src) if is_encrypted(f)]
        if already or (src / TREE_MANIFEST).is_file():
            first = already[0] if already else src / TREE_MANIFEST
            raise CandorError(f"{first} is already encrypted; decrypt {src} first or encrypt only plain files")

    def one(a: Path, b: Path) -> int:
        return encrypt_file(a, b, key, member=None if src.is_file() else a.relative_to(src).as_posix())

    of = (read_marker(src) or {}).get("kind") if src.is_dir() else None
    return _transform_tree(src, out, overwrite, one, on_file, "encrypted", "encrypted", "candorlm encrypt",
                           seal=None if src.is_file() else key, **({"of": of} if of else {}))


def decrypt_path(src: str | Path, out: str | Path, key: Key, overwrite: bool = False,
                 on_file: Callable[[int], None] | None = None) -> list[Path]:
    """Decrypt a file or a tree encrypted by `encrypt_path`. A tree is first checked whole against
    its keyed manifest (an added, missing, swapped, renamed, rolled-back or plain file is refused);
    format 1 (before keyed manifests) is decrypted with a warning saying how to encrypt it again."""
    src, out = Path(src), Path(out)
    old = False
    if src.is_file():
        header = read_header(src)
        if header is None:
            raise CandorError(f"{src} is not encrypted (it does not start with candorlm's encryption header)")
        old = header.version == 1
        root = tree_root(src)
        if root is not None:  # one member of a tree: checked against the tree's manifest too
            open_tree(root, key).check([src])
    elif src.is_dir():
        state = tree_format(src)
        old = state == "old"
        if state == "plain":
            raise CandorError(f"{src} holds no encrypted file: there is nothing to decrypt")
        if not old:
            open_tree(src, key).check_all()  # before one byte of plaintext is written

    def one(a: Path, b: Path) -> int:
        if not is_encrypted(a):
            raise plain_in_tree(a, src)
        return decrypt_file(a, b, key, member=member_name(a))

    if old:
        log.warning("%s", old_format(src, key, plain=out))
    kind = ((read_marker(src) or {}).get("of") if src.is_dir() else None) or "decrypted"
    return _transform_tree(src, out, overwrite, one, on_file, kind, "decrypted", "candorlm decrypt", plain_sums=old)
