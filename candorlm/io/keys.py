"""Keys for encryption at rest: a master key from a key file, CANDORLM_KEY or a passphrase, and the
ambient key that every reader of an encrypted file uses (`use_key`, else the environment's).

A key file must be private, like an ssh key: one that group or others may read or change is
refused with the `chmod 600` that fixes it (candorlm's own key files are created 0600).
The file format these keys open is `candorlm.io.sealed`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from candorlm.errors import CandorError
from candorlm.io.files import require_private

KIND_KEY, KIND_PASSPHRASE = 0, 1
SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P = 17, 8, 1
ENV_KEY, ENV_KEY_FILE, ENV_PASSPHRASE = "CANDORLM_KEY", "CANDORLM_KEY_FILE", "CANDORLM_PASSPHRASE"


@dataclass
class Key:
    """A master key: 32 raw bytes, or a passphrase turned into one by scrypt per salt."""

    raw: bytes | None = None
    passphrase: bytes | None = field(default=None, repr=False)
    scrypt_log2n: int = SCRYPT_LOG2N
    source: str = "key"
    flag: str = ""  # how a command is given this key again (for the commands messages print)
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
        require_private(path, "key file")
        key = cls.from_hex(path.read_text(encoding="ascii", errors="replace"), source=f"key file {path}")
        key.flag = f"--key-file {shlex.quote(str(path))}"
        return key

    @classmethod
    def from_passphrase(cls, passphrase: str, scrypt_log2n: int = SCRYPT_LOG2N) -> "Key":
        if not passphrase:
            raise CandorError("the passphrase is empty")
        return cls(passphrase=passphrase.encode("utf-8"), scrypt_log2n=scrypt_log2n, source="passphrase",
                   flag="--passphrase")

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
