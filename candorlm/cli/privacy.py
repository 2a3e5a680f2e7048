"""Privacy and security: scrub personal data, encrypt at rest, verify and back up, audit leakage."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from candorlm.cli.extras import needs
from candorlm.cli.options import KeyFile, NoVerify, key_from, options_from, reading_with
from candorlm.errors import CandorError

PANEL = "Privacy and security"

Passphrase = typer.Option(False, "--passphrase", help="The key is a passphrase (scrypt): asked for, or taken from "
                          "$CANDORLM_PASSPHRASE.")


def _passphrase(asked: bool, confirm: bool = False) -> Optional[str]:
    if not asked:
        return None
    from candorlm.io.sealed import ENV_PASSPHRASE

    if os.environ.get(ENV_PASSPHRASE):
        return os.environ[ENV_PASSPHRASE]
    if not sys.stdin.isatty():
        raise CandorError(f"--passphrase: there is no terminal to ask on; set {ENV_PASSPHRASE} instead")
    return typer.prompt("passphrase", hide_input=True, confirmation_prompt=confirm)


@needs("privacy")
@options_from("candorlm.privacy.scrub:scrub", skip=("key",))
def scrub(
    types: List[str] = typer.Option([], help="Types to find, comma-separated or repeated (default: all): CN_ID, "
                                    "PHONE, EMAIL, BANK_CARD, IP_ADDRESS, URL_CREDENTIALS, PASSPORT, VEHICLE_PLATE, "
                                    "PERSON."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="Pseudonym key (from `candorlm keygen`): the "
                                            "same key gives the same fakes across corpora; default: a random one "
                                            "for this run."),
    **options: Any,
) -> None:
    """Find and replace personal data (IDs, phones, e-mails, cards, IPs, URL credentials, passports,
    plates, names) in a corpus.

    Example: candorlm scrub notes/ -o notes.scrubbed.jsonl --operator pseudonym --report scrub.json
    """
    from candorlm.privacy.scrub import scrub as run_scrub
    from candorlm.progress import console

    key = key_from(key_file) if key_file else None
    wanted = [t.strip() for item in types for t in item.split(",") if t.strip()]
    rep = run_scrub(types=wanted or None, key=key.raw if key else None, **options)
    found = ", ".join(f"{t} {n:,}" for t, n in rep.counts.items() if n) or "nothing"
    console.print(f"wrote {options['out']}: {rep.documents:,} documents ({rep.documents_changed:,} changed, "
                  f"{rep.documents_dropped:,} dropped), {rep.mb_per_s:.2f} MB/s; found {found}")
    if rep.blank_lines_joined:
        console.print(f"{rep.blank_lines_joined:,} documents had blank lines inside, joined so each stays one "
                      f"document in text output; name the output .jsonl to keep them")


def keygen(out: Path = typer.Option(..., "-o", "--out", help="Key file to create (readable by you only).")) -> None:
    """Make a random AES-256 key file for encrypt, decrypt and --key-file.

    Example: candorlm keygen -o ~/.candorlm.key
    """
    from candorlm.privacy.crypto import write_key_file
    from candorlm.progress import console

    console.print(f"wrote {write_key_file(out)}; keep it safe: without it encrypted files cannot be read")


@needs("privacy")
def encrypt(
    path: Path = typer.Argument(..., help="File or directory: a corpus, a data directory or a run directory."),
    out: Path = typer.Option(..., "-o", "--out", help="Encrypted copy to write (same file names)."),
    key_file: KeyFile = None,
    passphrase: bool = Passphrase,
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Encrypt files with AES-256-GCM in authenticated chunks; training and generation read them
    with --key-file.

    Example: candorlm encrypt data/pd -o data/pd.enc --key-file ~/.candorlm.key
    """
    from candorlm.privacy.crypto import encrypt_path
    from candorlm.progress import console

    key = key_from(key_file, _passphrase(passphrase, confirm=True), required=True)
    written = encrypt_path(path, out, key, overwrite=overwrite)
    console.print(f"encrypted {len(written):,} files into {out}")


@needs("privacy")
def decrypt(
    path: Path = typer.Argument(..., help="Encrypted file or directory."),
    out: Path = typer.Option(..., "-o", "--out", help="Plain copy to write."),
    key_file: KeyFile = None,
    passphrase: bool = Passphrase,
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Decrypt files written by `candorlm encrypt`; a wrong key, a damaged or cut file is an error,
    never garbage.

    Example: candorlm decrypt data/pd.enc -o data/pd --key-file ~/.candorlm.key
    """
    from candorlm.privacy.crypto import decrypt_path
    from candorlm.progress import console

    written = decrypt_path(path, out, key_from(key_file, _passphrase(passphrase), required=True), overwrite=overwrite)
    console.print(f"decrypted {len(written):,} files into {out}")


def verify(
    path: Path = typer.Argument(..., help="Run or data directory (checked against its SHA256SUMS), or an encrypted "
                                "file."),
    key_file: KeyFile = None,
    update: bool = typer.Option(False, help="Write a fresh SHA256SUMS instead of checking (after a deliberate "
                                "change)."),
) -> None:
    """Check that a run or data directory is exactly as written (sha256 of every file); with a key
    (--key-file or the environment's), also authenticate every encrypted file in it.

    Example: candorlm verify runs/pd
    """
    from candorlm.privacy.integrity import update_manifest, verify as run_verify
    from candorlm.progress import console

    if update:
        console.print(f"wrote {update_manifest(path)}")
        return
    report = run_verify(path, key=key_from(key_file))
    extra = f"; {len(report.extra)} files not in the manifest: {', '.join(report.extra[:5])}" if report.extra else ""
    console.print(f"{path}: OK, {report.checked:,} files verified{extra}")


def backup(
    src: Path = typer.Argument(..., help="Run or data directory."),
    dest: Path = typer.Argument(..., help="Where the copy goes."),
    overwrite: bool = typer.Option(False, help="Replace an existing destination."),
) -> None:
    """Copy a directory and prove the copy matches the source's SHA256SUMS, file by file.

    Example: candorlm backup runs/pd /mnt/backup/runs/pd
    """
    from candorlm.privacy.integrity import backup as run_backup
    from candorlm.progress import console

    report = run_backup(src, dest, overwrite=overwrite)
    console.print(f"copied {src} to {dest}: {report.checked:,} files verified")


@needs("privacy")
@options_from("candorlm.privacy.audit:audit", skip=("key",))
def audit(key_file: KeyFile = None, no_verify: NoVerify = False, **options: Any) -> None:
    """Measure what a model leaks: canary exposure, extraction, membership inference and personal data
    in its generations; writes RUN/evals/privacy.json.

    Example: candorlm audit runs/pd
    """
    from candorlm.privacy.audit import audit as run_audit
    from candorlm.progress import console

    with reading_with(key_file, no_verify):
        result = run_audit(**options)
    if result["canaries"]:
        for repeats, row in result["canaries"]["by_repeats"].items():
            console.print(f"canaries repeated {repeats:>3}: mean exposure {row['mean_exposure']:.1f} bits, "
                          f"{row['extracted']} of {row['canaries']} extracted")
    ex, mi, pii = result["extraction"], result["membership"], result["pii_regurgitation"]
    console.print(f"extraction (exact next {ex['suffix_tokens']} tokens): train {ex['train']['exact_rate']:.3f}, "
                  f"held-out {ex['heldout']['exact_rate']:.3f}; membership AUC {mi['auc']}; "
                  f"personal data in generations: {pii['detected']} found, {pii['in_training_data']} verbatim "
                  f"in training")
    console.print(f"wrote {Path(options['run_dir']) / 'evals' / 'privacy.json'}")
