"""Files that may be encrypted at rest: the format, the ambient key, and reads that work either way.

A file keeps its name when encrypted; its bytes become

    header   magic "\\x89CANDORLM\\0ENC\\1\\n" + version, key kind (raw key | scrypt passphrase),
             scrypt cost, 16-byte salt, 7-byte nonce prefix, chunk size, 16-byte key check,
             scope (a file on its own | a member of an encrypted tree)
    chunks   AES-256-GCM(plaintext chunk), each with its 16-byte tag

Each file gets its own key, HKDF-SHA256(master key, salt), so nonces can never repeat across
files. A chunk's nonce is the prefix, the chunk's counter and a flag set only on the last chunk,
and every chunk authenticates the header too (the STREAM construction of Hoang et al. 2015):
reordered, dropped, appended or altered chunks, a cut file and a changed header all fail to
decrypt. The key check tells a wrong key apart from a damaged file. Nothing is ever returned
from a chunk that does not authenticate.

A member of an encrypted tree (`candorlm encrypt DIR`) also authenticates its path inside the
tree (posix, relative to the directory holding the tree's keyed manifest, CANDORLM-SEALED.json):
a member renamed, moved or swapped with another fails to decrypt. The keyed manifest itself
(which files, with which hashes) is `candorlm.io.sealedtree`. Format 1 (before paths were bound)
is still decrypted by `candorlm decrypt`, so that it can be encrypted again; every other reader
refuses it with the command that re-encrypts.

The master key is 32 random bytes (`candorlm keygen`), kept in a key file or the CANDORLM_KEY
environment variable as 64 hex digits, or derived from a passphrase with scrypt (n=2^17, r=8,
p=1; the salt is stored in each file).

Readers anywhere in candorlm call `read_bytes` / `read_text`: a plain file comes back as it is,
an encrypted one is decrypted with the key in force (`use_key`, or CANDORLM_KEY /
CANDORLM_KEY_FILE / CANDORLM_PASSPHRASE in the environment). The whole format lives in this
module; `candorlm.privacy.crypto` builds key files and encrypts and decrypts whole trees on it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from candorlm.errors import CandorError
from candorlm.io.files import atomic_output
# The keys live in candorlm.io.keys; readers everywhere import them from here too.
from candorlm.io.keys import (ENV_KEY, ENV_KEY_FILE, ENV_PASSPHRASE, KIND_KEY, KIND_PASSPHRASE,  # noqa: F401
                              SCRYPT_LOG2N, SCRYPT_P, SCRYPT_R, Key, active_key, resolve_key, use_key)

MAGIC = b"\x89CANDORLM\x00ENC\x01\n"  # 15 bytes; the \x89 and \x00 make it never valid text
VERSION = 2
CHUNK_SIZE = 1 << 20
TAG = 16
_HEADERS = {1: struct.Struct(">15sBBBBB16s7sI16s"),  # magic, version, kind, log2n, r, p, salt, prefix, chunk, check
            2: struct.Struct(">15sBBBBB16s7sI16sB")}  # ... and scope
_HEADER = _HEADERS[VERSION]
HEADER_SIZE = _HEADER.size
SCOPE_FILE, SCOPE_TREE = 0, 1
TREE_MANIFEST = "CANDORLM-SEALED.json"  # the keyed manifest at an encrypted tree's top (candorlm.io.sealedtree)


class DecryptionError(CandorError):
    """Wrong key, a damaged or cut file: never garbage."""


# ---------------------------------------------------------------- the format


def tree_holding(path: str | Path) -> Path | None:
    """The encrypted tree (a folder with a keyed manifest) that `path` lies inside, or None: no
    plain file may be written there (it leaks, and the tree no longer decrypts)."""
    for folder in Path(os.path.abspath(path)).parents:
        if (folder / TREE_MANIFEST).is_file():
            return folder
    return None


def _subkeys(master: bytes, salt: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=salt, info=b"candorlm aes-256-gcm stream v1").derive(master)
    return okm[:32], okm[32:]


def kdf_params(key: Key) -> tuple[int, int, int]:
    """The scrypt cost a new file (or tree manifest) records: (log2n, r, p), zeros for a raw key."""
    return (key.scrypt_log2n, SCRYPT_R, SCRYPT_P) if key.kind == KIND_PASSPHRASE else (0, 0, 0)


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 1 << 32:
        raise CandorError("file too large for one encrypted stream (more than 2^32 chunks)")
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def _read_full(f: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        block = f.read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _associated(header: bytes, member: str | None) -> bytes:
    # The header has a fixed size, so header + path is unambiguous; a file on its own binds no path.
    return header + (member.encode("utf-8", "surrogateescape") if member is not None else b"")


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: Key, chunk_size: int = CHUNK_SIZE,
                   member: str | None = None) -> int:
    """Encrypt everything `src` yields into `dst`; returns the plaintext byte count. member: the
    file's posix path inside an encrypted tree (bound into every chunk), None for a file on its own."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not 0 < chunk_size < 1 << 31:
        raise ValueError("chunk size must be below 2^31 bytes (one AES-GCM call's limit)")
    salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
    log2n, r, p = kdf_params(key)
    enc_key, check = _subkeys(key.master(salt, log2n, r, p), salt)
    scope = SCOPE_FILE if member is None else SCOPE_TREE
    header = _HEADER.pack(MAGIC, VERSION, key.kind, log2n, r, p, salt, prefix, chunk_size, check, scope)
    dst.write(header)
    aead, ad = AESGCM(enc_key), _associated(header, member)
    total, counter = 0, 0
    chunk = _read_full(src, chunk_size)
    while True:
        following = _read_full(src, chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        dst.write(aead.encrypt(_nonce(prefix, counter, last), chunk, ad))
        total += len(chunk)
        counter += 1
        if last:
            return total
        chunk = following


@dataclass
class Header:
    raw: bytes
    version: int
    kind: int
    log2n: int
    r: int
    p: int
    salt: bytes
    prefix: bytes
    chunk_size: int
    check: bytes
    scope: int = SCOPE_FILE


def _read_header(src: BinaryIO, name: str) -> Header:
    start = _read_full(src, len(MAGIC) + 1)
    if not start.startswith(MAGIC[:len(start)]) or len(start) < len(MAGIC):
        raise DecryptionError(f"{name} is not a file encrypted by candorlm")
    version = start[-1] if len(start) > len(MAGIC) else VERSION
    if version not in _HEADERS:
        raise DecryptionError(f"{name} was encrypted by a newer candorlm (format version {version}); upgrade candorlm")
    raw = start + _read_full(src, _HEADERS[version].size - len(start))
    if len(raw) < _HEADERS[version].size:
        raise DecryptionError(f"{name} is truncated: it ends inside the encryption header")
    _, version, kind, log2n, r, p, salt, prefix, chunk_size, check, *scope = _HEADERS[version].unpack(raw)
    if (kind not in (KIND_KEY, KIND_PASSPHRASE) or not 0 < chunk_size < 1 << 31 or scope[:1] not in ([], [0], [1])
            or (kind == KIND_PASSPHRASE and not 10 <= log2n <= 24)):
        raise DecryptionError(f"{name}: the encryption header is damaged")
    return Header(raw, version, kind, log2n, r, p, salt, prefix, chunk_size, check, *scope)


def read_header(path: Path) -> Header | None:
    """The encryption header of a file, None when the file is plain."""
    if not is_encrypted(path):
        return None
    with open(path, "rb") as f:
        return _read_header(f, str(path))


def old_format(what: Path | str, key: Key | None = None, plain: Path | str | None = None) -> str:
    """The one line that tells a user of a format-1 file or tree how to encrypt it again
    (plain: where `candorlm decrypt` is writing its plain copy right now)."""
    flag = f" {key.flag}" if key is not None and key.flag else ""
    what = shlex.quote(str(what))
    why = f"{what} was encrypted by an older candorlm (format 1), whose files can be renamed, swapped or rolled back unnoticed"
    if plain is not None:
        plain = shlex.quote(str(plain))
        return f"{why}; encrypt the plain copy again: `candorlm encrypt {plain} -o {what}.v2{flag}`, then remove {plain}"
    return (f"{why}; encrypt it again: `candorlm decrypt {what} -o {what}.plain{flag} && candorlm encrypt "
            f"{what}.plain -o {what}.v2{flag}`, then check and remove {what}.plain")


def decrypt_stream(src: BinaryIO, dst: BinaryIO | None, key: Key, name: str = "input",
                   sink: Callable[[bytes], None] | None = None, member: str | None = None,
                   allow_old: bool = False) -> int:
    """Decrypt `src` into `dst` (or hand each plaintext chunk to `sink`); returns the byte count.

    member: the path inside its encrypted tree the file must have been encrypted at (None: a
    file on its own). allow_old: accept format 1 (only `candorlm decrypt` does, to re-encrypt).
    Raises DecryptionError, naming `name`, on a wrong key, a damaged, cut, extended, renamed or
    swapped file; a chunk is written only after it authenticates."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = _read_header(src, name)
    if header.version == 1 and not allow_old:
        raise DecryptionError(old_format(name, key))
    if header.version > 1 and header.scope == SCOPE_TREE and member is None:
        raise DecryptionError(f"{name} belongs to an encrypted tree but no {TREE_MANIFEST} is above it: the tree's keyed "
                              f"manifest was removed, or the file was moved out of its tree; restore the tree from a "
                              f"backup")
    if header.version > 1 and header.scope == SCOPE_FILE and member is not None:
        raise DecryptionError(f"{name} was encrypted on its own, not as a member of the encrypted tree it is in: it was "
                              f"put there afterwards; remove it, or restore the tree from a backup")
    if (header.kind == KIND_PASSPHRASE) != (key.kind == KIND_PASSPHRASE):
        wanted = "a passphrase" if header.kind == KIND_PASSPHRASE else "a key file or CANDORLM_KEY"
        raise DecryptionError(f"{name} was encrypted with {wanted}, but {key.source} was given")
    enc_key, check = _subkeys(key.master(header.salt, header.log2n, header.r, header.p), header.salt)
    if not secrets.compare_digest(check, header.check):
        raise DecryptionError(f"{name}: wrong key ({key.source} is not the key this file was encrypted with, "
                              f"or the file's header is damaged)")
    aead = AESGCM(enc_key)
    ad = _associated(header.raw, member if header.version > 1 else None)
    write = sink or (dst.write if dst is not None else None)
    size = header.chunk_size + TAG
    total, counter = 0, 0
    chunk = _read_full(src, size)
    while True:
        if len(chunk) < TAG:
            raise DecryptionError(f"{name} is truncated: its last chunk is cut (chunk {counter})")
        following = _read_full(src, size) if len(chunk) == size else b""
        last = not following
        try:
            plain = aead.decrypt(_nonce(header.prefix, counter, last), chunk, ad)
        except InvalidTag:
            raise DecryptionError(_diagnose(aead, header, ad, chunk, counter, last, name, member)) from None
        if write is not None:
            write(plain)
        total += len(plain)
        counter += 1
        if last:
            return total
        chunk = following


def _diagnose(aead, header: Header, ad: bytes, chunk: bytes, counter: int, last: bool, name: str,
              member: str | None) -> str:
    from cryptography.exceptions import InvalidTag

    try:
        aead.decrypt(_nonce(header.prefix, counter, not last), chunk, ad)
    except InvalidTag:
        if member is not None and counter == 0:  # the first chunk fails at once for a file from elsewhere
            return (f"{name} does not authenticate as {member!r} of its encrypted tree: it was renamed, moved or "
                    f"swapped with another file of the tree, or damaged; restore the tree from a backup")
        if last:  # a cut inside the last chunk looks the same as a changed byte in it
            return f"{name} is damaged, truncated or was tampered with: its last chunk ({counter}) does not authenticate"
        return f"{name} is damaged or was tampered with: chunk {counter} does not authenticate"
    if last:
        return f"{name} is truncated: it ends after chunk {counter} without its final chunk"
    return f"{name} has data appended after its final chunk (chunk {counter})"


# ---------------------------------------------------------------- files and trees


def is_encrypted(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


def tree_root(path: str | Path) -> Path | None:
    """The encrypted tree a file lies in: the nearest directory above it holding a keyed manifest."""
    here = Path(os.path.abspath(path)).parent
    for directory in (here, *here.parents):
        if (directory / TREE_MANIFEST).is_file():
            return directory
    return None


def member_name(path: str | Path) -> str | None:
    """A file's posix path inside its encrypted tree (what its chunks authenticate), None outside one."""
    root = tree_root(path)
    return None if root is None else Path(os.path.abspath(path)).relative_to(root).as_posix()


def _require_key(path: Path, key: Key | None) -> Key:
    key = key or active_key()
    if key is None:
        raise CandorError(f"{path} is encrypted: give its key with --key-file FILE (or set {ENV_KEY} or {ENV_KEY_FILE}, "
                          f"or --passphrase / {ENV_PASSPHRASE})")
    return key


def plain_in_tree(path: Path, root: Path) -> CandorError:
    return CandorError(f"{path} is a plain file inside the encrypted tree {root}: it was put there after the tree was "
                       f"encrypted (perhaps to replace an encrypted file); remove it, or restore the tree from a backup")


def read_bytes(path: str | Path, key: Key | None = None) -> bytes:
    """A file's content: as it is when plain, decrypted (and authenticated, its path inside its
    tree too) when encrypted. A plain file inside an encrypted tree is refused."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            root = tree_root(path)
            if root is not None and path.name not in (TREE_MANIFEST, "SHA256SUMS") and not path.name.startswith("."):
                raise plain_in_tree(path, root)
            f.seek(0)
            return f.read()
        f.seek(0)
        out = bytearray()
        decrypt_stream(f, None, _require_key(path, key), str(path), sink=out.extend, member=member_name(path))
        return bytes(out)


def authenticate(path: str | Path, key: Key | None = None) -> int:
    """Decrypt a file without keeping the plaintext: proves it is whole and unaltered."""
    path = Path(path)
    with open(path, "rb") as f:
        return decrypt_stream(f, None, _require_key(path, key), str(path), member=member_name(path))


def read_text(path: str | Path, key: Key | None = None, encoding: str = "utf-8") -> str:
    return read_bytes(path, key).decode(encoding)


def encrypt_file(src: Path, dst: Path, key: Key, member: str | None = None) -> int:
    """Encrypt a file on its own, or (member: its path there) as a member of an encrypted tree."""
    if is_encrypted(src):
        raise CandorError(f"{src} is already encrypted")
    with open(src, "rb") as f, atomic_output(dst, "encrypt") as out:
        return encrypt_stream(f, out, key, member=member)


def decrypt_file(src: Path, dst: Path, key: Key, member: str | None = None) -> int:
    """Decrypt a file on its own, or a member of an encrypted tree at its path there (format 1
    too, with a warning that says how to encrypt it again)."""
    # Written to a temporary file and renamed only when every chunk authenticated: a failure
    # never leaves partial plaintext under the output name, and an interrupted run's partial
    # plaintext is removed by the next command that writes beside it (candorlm.io.files).
    with open(src, "rb") as f, atomic_output(dst, "decrypt") as out:
        return decrypt_stream(f, out, key, str(src), member=member, allow_old=True)
