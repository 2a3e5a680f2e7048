"""Integrity: a sha256 manifest for a run or data directory, checking it, and verified backups.

The manifest is `SHA256SUMS` at the directory's top, one `<sha256>  <relative path>` line per
file, the format of coreutils' `sha256sum`: `cd DIR && sha256sum -c SHA256SUMS` checks it too.
`candorlm prepare` and `candorlm train` write one when they finish; `candorlm verify PATH`
checks it; `candorlm backup SRC DEST` copies a directory and proves the copy matches.
Hidden entries (temporary files of an interrupted write) are left out.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from candorlm.errors import CandorError
from candorlm.io.files import atomic_write_text, sha256_file, swapped_into_place

MANIFEST_NAME = "SHA256SUMS"


def manifest_files(root: Path) -> list[Path]:
    """Files a manifest covers: everything under root but the manifest and hidden entries."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.as_posix() == MANIFEST_NAME or any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _format(entries: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))


def _write(root: Path, entries: dict[str, str]) -> Path:
    path = root / MANIFEST_NAME
    atomic_write_text(path, _format(entries))
    return path


def write_manifest(root: str | Path) -> Path:
    """Hash every file under root into root/SHA256SUMS (atomically)."""
    root = Path(root)
    if not root.is_dir():
        raise CandorError(f"not a directory: {root}")
    return _write(root, {p.relative_to(root).as_posix(): sha256_file(p) for p in manifest_files(root)})


def read_manifest(root: Path) -> dict[str, str]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CandorError(f"{root} has no {MANIFEST_NAME} manifest. Write one with: candorlm verify {root} --update")
    entries = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise CandorError(f"{path}:{lineno} is not a '<sha256>  <path>' line; the manifest is damaged")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CandorError(f"{path}:{lineno} names a path outside the directory ({name}); refusing it")
        entries[name] = digest
    return entries


def update_manifest(root: str | Path, paths: Iterable[str | Path]) -> None:
    """Re-hash some files into an existing manifest (no-op when root has none)."""
    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        return
    entries = read_manifest(root)
    for path in paths:
        path = Path(path)
        name = path.resolve().relative_to(root.resolve()).as_posix()
        if path.is_file():
            entries[name] = sha256_file(path)
        else:
            entries.pop(name, None)
    _write(root, entries)


@dataclass
class VerifyReport:
    root: Path
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.changed

    def problems(self) -> str:
        lines = [f"changed: {n}" for n in self.changed] + [f"missing: {n}" for n in self.missing]
        return "\n  ".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")


def verify_manifest(root: str | Path, check_extra: bool = True, raise_on_error: bool = True,
                    on_file: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every file listed in root/SHA256SUMS. Missing or changed files are errors (a
    CandorError listing them, unless raise_on_error=False); files not listed are reported."""
    root = Path(root)
    entries = read_manifest(root)
    report = VerifyReport(root)
    for name, digest in sorted(entries.items()):
        path = root / name
        if not path.is_file():
            report.missing.append(name)
            continue
        if sha256_file(path) != digest:
            report.changed.append(name)
        report.checked += 1
        if on_file:
            on_file(path.stat().st_size)
    if check_extra:
        report.extra = [p.relative_to(root).as_posix() for p in manifest_files(root)
                        if p.relative_to(root).as_posix() not in entries]
    if raise_on_error and not report.ok:
        raise CandorError(f"{root} does not match its {MANIFEST_NAME} ({len(report.changed)} changed, "
                          f"{len(report.missing)} missing):\n  {report.problems()}")
    return report


def backup(src: str | Path, dest: str | Path, overwrite: bool = False) -> VerifyReport:
    """Copy a directory to dest and prove the copy is exact: the source is checked against its
    manifest (one is written first if it has none), then the copy against the same manifest."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise CandorError(f"not a directory: {src}")
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise CandorError(f"{dest} already exists and is not empty. Choose another destination, or pass --overwrite.")
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
    report.root = dest
    return report


def verify(path: str | Path, key=None, on_file: Callable[[int], None] | None = None) -> VerifyReport:
    """`candorlm verify`: a directory against its manifest; with a key, also decrypt (without
    keeping) every encrypted file in it, which authenticates each chunk. A single encrypted
    file is authenticated alone."""
    from candorlm.io.sealed import authenticate, is_encrypted

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
    if key is not None:
        for file in manifest_files(path):
            if is_encrypted(file):
                authenticate(file, key)
    return report
