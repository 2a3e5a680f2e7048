"""Files that may be encrypted at rest: the format, the ambient key, and reads that work either way.

A file keeps its name when encrypted; its bytes become

    header   magic "\\x89CANDORLM\\0ENC\\1\\n" + version, key kind (raw key | scrypt passphrase),
             scrypt cost, 16-byte salt, 7-byte nonce prefix, chunk size, 16-byte key check
    chunks   AES-256-GCM(plaintext chunk), each with its 16-byte tag

Each file gets its own key, HKDF-SHA256(master key, salt), so nonces can never repeat across
files. A chunk's nonce is the prefix, the chunk's counter and a flag set only on the last chunk,
and every chunk authenticates the header too (the STREAM construction of Hoang et al. 2015):
reordered, dropped, appended or altered chunks, a cut file and a changed header all fail to
decrypt. The key check tells a wrong key apart from a damaged file. Nothing is ever returned
from a chunk that does not authenticate.

The master key is 32 random bytes (`candorlm keygen`), kept in a key file or the CANDORLM_KEY
environment variable as 64 hex digits, or derived from a passphrase with scrypt (n=2^17, r=8,
p=1; the salt is stored in each file).

Readers anywhere in candorlm call `read_bytes` / `read_text`: a plain file comes back as it is,
an encrypted one is decrypted with the key in force (`use_key`, or CANDORLM_KEY /
CANDORLM_KEY_FILE / CANDORLM_PASSPHRASE in the environment). The whole format lives in this
module; `candorlm.privacy.crypto` builds key files and encrypts and decrypts whole trees on it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from candorlm.errors import CandorError

MAGIC = b"\x89CANDORLM\x00ENC\x01\n"  # 15 bytes; the \x89 and \x00 make it never valid text
VERSION = 1
CHUNK_SIZE = 1 << 20
TAG = 16
_HEADER = struct.Struct(">15sBBBBB16s7sI16s")  # magic, version, kind, log2n, r, p, salt, prefix, chunk, check
HEADER_SIZE = _HEADER.size
KIND_KEY, KIND_PASSPHRASE = 0, 1
SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P = 17, 8, 1
ENV_KEY, ENV_KEY_FILE, ENV_PASSPHRASE = "CANDORLM_KEY", "CANDORLM_KEY_FILE", "CANDORLM_PASSPHRASE"


class DecryptionError(CandorError):
    """Wrong key, a damaged or cut file: never garbage."""


# ---------------------------------------------------------------- keys


@dataclass
class Key:
    """A master key: 32 raw bytes, or a passphrase turned into one by scrypt per salt."""

    raw: bytes | None = None
    passphrase: bytes | None = field(default=None, repr=False)
    scrypt_log2n: int = SCRYPT_LOG2N
    source: str = "key"
    _derived: dict[tuple[bytes, int, int, int], bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if (self.raw is None) == (self.passphrase is None):
            raise ValueError("a Key holds either raw bytes or a passphrase")
        if self.raw is not None and len(self.raw) != 32:
            raise CandorError(f"{self.source}: an AES-256 key is 32 bytes (64 hex digits), got {len(self.raw)} bytes")

    @property
    def kind(self) -> int:
        return KIND_KEY if self.raw is not None else KIND_PASSPHRASE

    def master(self, salt: bytes, log2n: int, r: int, p: int) -> bytes:
        if self.raw is not None:
            return self.raw
        cache_key = (salt, log2n, r, p)
        if cache_key not in self._derived:  # scrypt is slow on purpose: derive once per salt
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            self._derived[cache_key] = Scrypt(salt=salt, length=32, n=1 << log2n, r=r, p=p).derive(self.passphrase)
        return self._derived[cache_key]

    @classmethod
    def from_hex(cls, text: str, source: str = "key") -> "Key":
        text = text.strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise CandorError(f"{source} is not a key: expected 64 hex digits (make one with `candorlm keygen -o FILE`)") from None
        return cls(raw=raw, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> "Key":
        path = Path(path)
        if not path.is_file():
            raise CandorError(f"key file not found: {path}")
        return cls.from_hex(path.read_text(encoding="ascii", errors="replace"), source=f"key file {path}")

    @classmethod
    def from_passphrase(cls, passphrase: str, scrypt_log2n: int = SCRYPT_LOG2N) -> "Key":
        if not passphrase:
            raise CandorError("the passphrase is empty")
        return cls(passphrase=passphrase.encode("utf-8"), scrypt_log2n=scrypt_log2n, source="passphrase")

    @classmethod
    def from_env(cls) -> "Key | None":
        if os.environ.get(ENV_KEY):
            return cls.from_hex(os.environ[ENV_KEY], source=f"${ENV_KEY}")
        if os.environ.get(ENV_KEY_FILE):
            return cls.from_file(os.environ[ENV_KEY_FILE])
        if os.environ.get(ENV_PASSPHRASE):
            return cls.from_passphrase(os.environ[ENV_PASSPHRASE])
        return None


def resolve_key(key_file: str | Path | None = None, passphrase: str | None = None) -> Key | None:
    """The key a command was given: --key-file, --passphrase, else the environment, else None."""
    if key_file is not None and passphrase is not None:
        raise CandorError("give either --key-file or --passphrase, not both")
    if key_file is not None:
        return Key.from_file(key_file)
    if passphrase is not None:
        return Key.from_passphrase(passphrase)
    return Key.from_env()


_active: list[Key] = []


@contextlib.contextmanager
def use_key(key: Key | None) -> Iterator[None]:
    """Within this block, encrypted files are read with `key` (None: the environment's key)."""
    if key is None:
        yield
        return
    _active.append(key)
    try:
        yield
    finally:
        _active.pop()


def active_key() -> Key | None:
    return _active[-1] if _active else Key.from_env()


# ---------------------------------------------------------------- the format


def _subkeys(master: bytes, salt: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=salt, info=b"candorlm aes-256-gcm stream v1").derive(master)
    return okm[:32], okm[32:]


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


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: Key, chunk_size: int = CHUNK_SIZE) -> int:
    """Encrypt everything `src` yields into `dst`; returns the plaintext byte count."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not 0 < chunk_size < 1 << 31:
        raise ValueError("chunk size must be below 2^31 bytes (one AES-GCM call's limit)")
    salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
    log2n, r, p = (key.scrypt_log2n, SCRYPT_R, SCRYPT_P) if key.kind == KIND_PASSPHRASE else (0, 0, 0)
    enc_key, check = _subkeys(key.master(salt, log2n, r, p), salt)
    header = _HEADER.pack(MAGIC, VERSION, key.kind, log2n, r, p, salt, prefix, chunk_size, check)
    dst.write(header)
    aead = AESGCM(enc_key)
    total, counter = 0, 0
    chunk = _read_full(src, chunk_size)
    while True:
        following = _read_full(src, chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        dst.write(aead.encrypt(_nonce(prefix, counter, last), chunk, header))
        total += len(chunk)
        counter += 1
        if last:
            return total
        chunk = following


@dataclass
class _Header:
    raw: bytes
    kind: int
    log2n: int
    r: int
    p: int
    salt: bytes
    prefix: bytes
    chunk_size: int
    check: bytes


def _read_header(src: BinaryIO, name: str) -> _Header:
    raw = _read_full(src, HEADER_SIZE)
    if not raw.startswith(MAGIC[:len(raw)]) or len(raw) < len(MAGIC):
        raise DecryptionError(f"{name} is not a file encrypted by candorlm")
    if len(raw) < HEADER_SIZE:
        raise DecryptionError(f"{name} is truncated: it ends inside the encryption header")
    magic, version, kind, log2n, r, p, salt, prefix, chunk_size, check = _HEADER.unpack(raw)
    if version != VERSION:
        raise DecryptionError(f"{name} was encrypted by a newer candorlm (format version {version}); upgrade candorlm")
    if kind not in (KIND_KEY, KIND_PASSPHRASE) or not 0 < chunk_size < 1 << 31 or (kind == KIND_PASSPHRASE and not 10 <= log2n <= 24):
        raise DecryptionError(f"{name}: the encryption header is damaged")
    return _Header(raw, kind, log2n, r, p, salt, prefix, chunk_size, check)


def decrypt_stream(src: BinaryIO, dst: BinaryIO | None, key: Key, name: str = "input",
                   sink: Callable[[bytes], None] | None = None) -> int:
    """Decrypt `src` into `dst` (or hand each plaintext chunk to `sink`); returns the byte count.

    Raises DecryptionError, naming `name`, on a wrong key or a damaged, cut or extended file;
    a chunk is written only after it authenticates."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = _read_header(src, name)
    if (header.kind == KIND_PASSPHRASE) != (key.kind == KIND_PASSPHRASE):
        wanted = "a passphrase" if header.kind == KIND_PASSPHRASE else "a key file or CANDORLM_KEY"
        raise DecryptionError(f"{name} was encrypted with {wanted}, but {key.source} was given")
    enc_key, check = _subkeys(key.master(header.salt, header.log2n, header.r, header.p), header.salt)
    if not secrets.compare_digest(check, header.check):
        raise DecryptionError(f"{name}: wrong key ({key.source} is not the key this file was encrypted with, "
                              f"or the file's header is damaged)")
    aead = AESGCM(enc_key)
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
            plain = aead.decrypt(_nonce(header.prefix, counter, last), chunk, header.raw)
        except InvalidTag:
            raise DecryptionError(_diagnose(aead, header, chunk, counter, last, name)) from None
        if write is not None:
            write(plain)
        total += len(plain)
        counter += 1
        if last:
            return total
        chunk = following


def _diagnose(aead, header: _Header, chunk: bytes, counter: int, last: bool, name: str) -> str:
    from cryptography.exceptions import InvalidTag

    try:
        aead.decrypt(_nonce(header.prefix, counter, not last), chunk, header.raw)
    except InvalidTag:
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


def _require_key(path: Path, key: Key | None) -> Key:
    key = key or active_key()
    if key is None:
        raise CandorError(f"{path} is encrypted: give its key with --key-file FILE (or set {ENV_KEY} or {ENV_KEY_FILE}, "
                          f"or --passphrase / {ENV_PASSPHRASE})")
    return key


def read_bytes(path: str | Path, key: Key | None = None) -> bytes:
    """A file's content: as it is when plain, decrypted (and authenticated) when encrypted."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            f.seek(0)
            return f.read()
        f.seek(0)
        out = bytearray()
        decrypt_stream(f, None, _require_key(path, key), str(path), sink=out.extend)
        return bytes(out)


def authenticate(path: str | Path, key: Key | None = None) -> int:
    """Decrypt a file without keeping the plaintext: proves it is whole and unaltered."""
    path = Path(path)
    with open(path, "rb") as f:
        return decrypt_stream(f, None, _require_key(path, key), str(path))


def read_text(path: str | Path, key: Key | None = None, encoding: str = "utf-8") -> str:
    return read_bytes(path, key).decode(encoding)


def _atomic_output(dst: Path) -> tuple[BinaryIO, Path]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    return os.fdopen(fd, "wb"), Path(tmp)


def encrypt_file(src: Path, dst: Path, key: Key) -> int:
    if is_encrypted(src):
        raise CandorError(f"{src} is already encrypted")
    out, tmp = _atomic_output(dst)
    try:
        with open(src, "rb") as f, out:
            n = encrypt_stream(f, out, key)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def decrypt_file(src: Path, dst: Path, key: Key) -> int:
    # Written to a temporary file and renamed only when every chunk authenticated: a failure
    # never leaves partial plaintext under the output name.
    out, tmp = _atomic_output(dst)
    try:
        with open(src, "rb") as f, out:
            n = decrypt_stream(f, out, key, str(src))
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
