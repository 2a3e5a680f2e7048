"""A directory's manifest: `SHA256SUMS` at its top, one `<sha256>  <relative path>` line per file,
the format of coreutils' `sha256sum` (`cd DIR && sha256sum -c SHA256SUMS` checks it too).

`candorlm prepare` and `candorlm train` write one when they finish; loading a run checks the
files it reads against it (`check_files`); `candorlm verify` checks them all. Hidden entries
(candorlm's marker, temporary files of an interrupted write) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from candorlm.errors import CandorError
from candorlm.io.files import atomic_write_text, sha256_file

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


def hash_files(root: Path) -> dict[str, str]:
    """What a manifest of root would hold: each covered file's relative path and sha256."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in manifest_files(root)}


def write_manifest(root: str | Path, entries: dict[str, str] | None = None) -> Path:
    """Write root/SHA256SUMS (atomically): `entries`, or every file under root hashed now."""
    root = Path(root)
    if not root.is_dir():
        raise CandorError(f"not a directory: {root}")
    return _write(root, hash_files(root) if entries is None else entries)


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


def check_files(root: Path, files: Iterable[Path], what: str = "directory", hash: bool = True) -> None:
    """Check the files about to be read against root/SHA256SUMS: each must be listed and match.
    A missing manifest, an unlisted file or a changed one is a CandorError that says what to do
    (hash=False: only that each is listed)."""
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise CandorError(f"{root} has no {MANIFEST_NAME}, so its files cannot be checked before loading. If you "
                          f"know where this {what} came from, write one with `candorlm verify {root} --update`, or "
                          f"load it unchecked with --no-verify (verify=False in Python)")
    entries = read_manifest(root)
    for path in files:
        name = path.relative_to(root).as_posix()
        if name not in entries:
            raise CandorError(f"{path} is not listed in {manifest}; it was added after the {what} was written. "
                              f"Remove it, or after checking it is yours run `candorlm verify {root} --update`")
        if hash and sha256_file(path) != entries[name]:
            raise CandorError(f"{path} does not match {manifest}: it was changed or damaged after the {what} was "
                              f"written. Restore it from a backup (`candorlm verify {root}` lists every difference), "
                              f"or load it anyway with --no-verify")
