"""The keyed manifest of an encrypted tree: CANDORLM-SEALED.json at the top of what `candorlm
encrypt DIR` writes, so that no file of the tree can be added, removed, swapped, renamed or rolled
back unnoticed.

    {"format": "candorlm sealed tree", "version": 1, "kind": "key", "scrypt": [0, 0, 0],
     "salt": "<hex>", "check": "<hex>", "files": {"config.toml": "<sha256>", ...}, "mac": "<hex>"}

`files` maps every member's posix path to the sha256 of its encrypted bytes (so checking needs no
decryption); `mac` is HMAC-SHA256 over everything else, under a subkey derived from the master
key with HKDF (salt: `salt`; a passphrase's scrypt cost: `scrypt`); `check`, from the same HKDF,
tells a wrong key apart from a changed manifest. Each member also authenticates its own path
(`candorlm.io.sealed`), so even a file moved inside the tree fails on its own.

The plain SHA256SUMS beside it stays for checks without the key (a backup's copy), but decides
nothing about an encrypted tree: anyone can rewrite it.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from candorlm.errors import CandorError
from candorlm.io.files import TEMP_TAG, atomic_write_text, sha256_file
from candorlm.io.keys import KIND_KEY, KIND_PASSPHRASE, Key, active_key
from candorlm.io.manifest import MANIFEST_NAME
from candorlm.io.outputs import FILES_RECORD, MARKER
from candorlm.io.sealed import (SCOPE_TREE, TREE_MANIFEST, DecryptionError, is_encrypted, kdf_params, old_format,
                                plain_in_tree, read_header)

FORMAT, VERSION = "candorlm sealed tree", 1
# What a tree's copy never carries as a member: manifests and candorlm's own records (by name, at
# any depth), and candorlm's temporary files.
NOT_MEMBERS = frozenset({TREE_MANIFEST, MANIFEST_NAME, MARKER, FILES_RECORD})


def tree_files(root: Path) -> list[Path]:
    """The files that are members of the tree at root (or would be, once encrypted)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in NOT_MEMBERS and TEMP_TAG not in p.name)


def _subkeys(key: Key, salt: bytes, log2n: int, r: int, p: int) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=salt,
               info=b"candorlm sealed tree manifest hmac-sha256 v1").derive(key.master(salt, log2n, r, p))
    return okm[:32], okm[32:]


def _mac(mac_key: bytes, body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return hmac.new(mac_key, canonical, "sha256").hexdigest()


def write_tree_manifest(root: Path, key: Key) -> Path:
    """Write root/CANDORLM-SEALED.json over every member file now in root (all encrypted)."""
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in tree_files(root)}
    salt = secrets.token_bytes(16)
    log2n, r, p = kdf_params(key)
    mac_key, check = _subkeys(key, salt, log2n, r, p)
    body = {"format": FORMAT, "version": VERSION, "kind": "key" if key.kind == KIND_KEY else "passphrase",
            "scrypt": [log2n, r, p], "salt": salt.hex(), "check": check.hex(), "files": files}
    path = root / TREE_MANIFEST
    atomic_write_text(path, json.dumps({**body, "mac": _mac(mac_key, body)}, indent=1, sort_keys=True) + "\n")
    return path


@dataclass
class SealedTree:
    """An encrypted tree whose keyed manifest authenticated: `files` can be trusted."""

    root: Path
    files: dict[str, str]  # member path -> sha256 of its encrypted bytes

    def name(self, path: Path) -> str:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()

    def check_listing(self, ignore: Iterable[str] = ()) -> None:
        """Refuse a missing member, or a file that is not one (ignore: top-level entries that
        candorlm writes into a run later and no loader reads)."""
        ignore = tuple(ignore)
        present = {self.name(p) for p in tree_files(self.root)}
        missing = sorted(set(self.files) - present)
        added = sorted(n for n in present - set(self.files) if n.split("/", 1)[0] not in ignore)
        if missing:
            raise CandorError(f"{self.root} is missing {_some(missing)}, which its {TREE_MANIFEST} lists: files of the "
                              f"encrypted tree were removed or renamed; restore the tree from a backup")
        if added:
            first = self.root / added[0]
            if not is_encrypted(first):
                raise plain_in_tree(first, self.root)
            raise CandorError(f"{self.root} holds {_some(added)}, which its {TREE_MANIFEST} does not list: files were "
                              f"added or renamed after the tree was encrypted; remove them, or restore the tree from "
                              f"a backup")

    def check(self, paths: Iterable[Path], hash: bool = True) -> None:
        """Each file must be a listed member, encrypted, and exactly the file the tree was encrypted
        with (hash=False: all but the last, which reads the whole file)."""
        for path in paths:
            name = self.name(path)
            if name not in self.files:
                if not is_encrypted(path):
                    raise plain_in_tree(path, self.root)
                raise CandorError(f"{path} is not listed in {self.root / TREE_MANIFEST}: it was added or renamed "
                                  f"after the tree was encrypted; remove it, or restore the tree from a backup")
            if not is_encrypted(path):
                raise plain_in_tree(path, self.root)
            if hash and not hmac.compare_digest(sha256_file(path), self.files[name]):
                raise CandorError(f"{path} is not the file {self.root} was encrypted with (its sha256 differs from "
                                  f"{TREE_MANIFEST}): it was changed, damaged, swapped with another file or rolled "
                                  f"back to an older copy; restore the tree from a backup")

    def check_all(self) -> None:
        self.check_listing()
        self.check([self.root / name for name in self.files])


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def tree_format(root: Path) -> str:
    """What kind of tree root is: 'sealed' (a keyed manifest), 'plain' (no encrypted file),
    'old' (format 1, from before keyed manifests), or 'orphaned' (members, but the manifest is gone)."""
    if (root / TREE_MANIFEST).is_file():
        return "sealed"
    first = [root / n for n in ("config.toml", "tokenizer.json", "model.safetensors") if (root / n).is_file()]
    for path in first + tree_files(root):  # a run's first reads, then the rest, up to the first encrypted file
        header = read_header(path)
        if header is not None:
            return "old" if header.version == 1 else "orphaned" if header.scope == SCOPE_TREE else "plain"
    return "plain"


def encrypted_tree(path: str | Path) -> Path | None:
    """The encrypted tree that path is or lies in (path need not exist yet): the nearest folder at
    or above it with a keyed manifest, or path itself when it is an older or orphaned encrypted
    tree; None when nothing encrypted holds it."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if (folder / TREE_MANIFEST).is_file():
            return folder
    return path if path.is_dir() and tree_format(path) != "plain" else None


def refuse_plain_output_in_sealed_tree(run_dir: str | Path, what: str, out: str | Path | None = None,
                                       option: str | None = None) -> None:
    """Raise CandorError, before any work, when `what` (plain text) would be written into an
    encrypted run: into run_dir itself (out None), or into out where out lies in an encrypted tree
    or inside run_dir. A plain file in a sealed tree leaks what the run holds, and `candorlm
    decrypt` then refuses the whole tree. option names the command's output option, if any."""
    run = Path(run_dir)
    target = run if out is None else Path(out)
    tree = encrypted_tree(target)
    if tree is None and out is not None and Path(os.path.abspath(out)).is_relative_to(os.path.abspath(run)):
        tree = encrypted_tree(run)
    if tree is None:
        return
    elsewhere = f", or pass {option} to write outside the encrypted run" if option else ""
    raise CandorError(f"{tree} is encrypted, and {what} would be written into it as plain text; decrypt it to a "
                      f"folder (candorlm decrypt {tree} -o DIR --key-file KEY) and run there{elsewhere}")


def open_tree(root: Path, key: Key | None = None) -> SealedTree:
    """Authenticate root's keyed manifest with the key (or the one in force): wrong key and changed
    manifest are told apart. A tree of format 1, or one whose manifest was removed, is refused."""
    root = Path(root)
    kind = tree_format(root)
    if kind != "sealed":
        if kind == "old":
            raise DecryptionError(old_format(root, key or active_key()))
        if kind == "orphaned":
            raise DecryptionError(f"{root} is an encrypted tree without its {TREE_MANIFEST}: the keyed manifest was "
                                  f"removed, so nothing vouches for its files; restore the tree from a backup")
        raise CandorError(f"{root} is not an encrypted tree (no {TREE_MANIFEST}, no encrypted file)")
    key = key or active_key()
    if key is None:
        raise CandorError(f"{root} is encrypted: give its key with --key-file FILE (or set CANDORLM_KEY, "
                          f"CANDORLM_KEY_FILE, or --passphrase / CANDORLM_PASSPHRASE)")
    path = root / TREE_MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        body = {k: v for k, v in doc.items() if k != "mac"}
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
        log2n, r, p = (int(v) for v in doc["scrypt"])
        kind_ = KIND_KEY if doc["kind"] == "key" else KIND_PASSPHRASE
        salt, check, mac = bytes.fromhex(doc["salt"]), bytes.fromhex(doc["check"]), str(doc["mac"])
        files = {str(k): str(v) for k, v in doc["files"].items()}
        if kind_ == KIND_PASSPHRASE and not 10 <= log2n <= 24:
            raise ValueError(f"scrypt cost 2^{log2n}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DecryptionError(f"{path} is damaged or is not a candorlm tree manifest ({type(exc).__name__}: {exc}); "
                              f"restore the tree from a backup") from None
    if kind_ != key.kind:
        wanted = "a passphrase" if kind_ == KIND_PASSPHRASE else "a key file or CANDORLM_KEY"
        raise DecryptionError(f"{root} was encrypted with {wanted}, but {key.source} was given")
    mac_key, expected_check = _subkeys(key, salt, log2n, r, p)
    if not hmac.compare_digest(check, expected_check):
        raise DecryptionError(f"{root}: wrong key ({key.source} is not the key this tree was encrypted with)")
    if not hmac.compare_digest(mac, _mac(mac_key, body)):
        raise DecryptionError(f"{path} was changed after the tree was encrypted (its HMAC does not match): the list "
                              f"of files it vouches for cannot be trusted; restore the tree from a backup")
    return SealedTree(root, files)
