"""Who may reach the model: API keys with scopes, per-key rate limits and token budgets.

A key looks like `clm-<id>.<secret>`: the id (12 hex digits) is public and finds the key's
record; the secret (256 random bits) is stored only as a salted SHA-256 hash. A slow password
hash (scrypt, bcrypt) would buy nothing here: it protects guessable passwords, and a 256-bit
random secret cannot be guessed, while every request pays the hash. The salt keeps equal
secrets from having equal hashes and rules out precomputed tables.

Checking a key always hashes the presented secret and compares digests with
`hmac.compare_digest`, whether or not the id exists (an unknown id is compared against a decoy),
so the time taken says nothing about how much of a secret was right.

The keys file is JSON, written atomically with mode 0600; the server rereads it when it
changes, so `candorlm keys revoke` takes effect on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from candorlm.errors import CandorError
from candorlm.io.files import atomic_write_text, require_private

log = logging.getLogger(__name__)
SCOPES = ("generate", "explain", "admin")
KEY_PREFIX = "clm-"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeyRecord:
    """What the keys file holds about one key (never the key itself)."""

    name: str
    id: str
    salt: str  # hex
    hash: str  # hex sha256(salt + secret)
    scopes: tuple[str, ...]
    created: str
    requests_per_minute: int | None = 60
    tokens_per_hour: int | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8", "surrogatepass")).digest()


def parse_key(key: str) -> tuple[str, str]:
    """(id, secret) of a presented key; ('', key) when it is not shaped like one of ours."""
    if key.startswith(KEY_PREFIX):
        key_id, dot, secret = key[len(KEY_PREFIX):].partition(".")
        if dot and secret:
            return key_id, secret
    return "", key


def parse_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    items = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes) if s.strip()]
    unknown = [s for s in items if s not in SCOPES]
    if unknown or not items:
        problem = f"unknown scope {', '.join(repr(s) for s in unknown)}" if unknown else "no scopes given"
        raise CandorError(f"{problem}; valid scopes: {', '.join(SCOPES)} "
                          f"(comma-separated, e.g. --scopes generate,explain)")
    return tuple(dict.fromkeys(items))


# ---------------------------------------------------------------------------- the keys file


def read_keys(path: str | Path) -> list[KeyRecord]:
    path = Path(path)
    if not path.exists():
        return []
    require_private(path, "keys file")  # like an ssh key: another user could add a key of their own
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {raw.get('version')!r}, expected {FORMAT_VERSION}")
        records = []
        for item in raw["keys"]:
            item = dict(item)
            item["scopes"] = parse_scopes(item["scopes"])
            records.append(KeyRecord(**item))
        return records
    except CandorError as exc:
        raise CandorError(f"{path}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CandorError(f"{path} is not a candorlm keys file ({type(exc).__name__}: {exc}); "
                          f"create keys with `candorlm keys add NAME --keys {path}`") from None


def write_keys(path: str | Path, records: list[KeyRecord]) -> None:
    path = Path(path)
    data = {"version": FORMAT_VERSION, "keys": [{**asdict(r), "scopes": list(r.scopes)} for r in records]}
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.chmod(path, 0o600)  # hashes only, but nobody else needs to read them


def add_key(path: str | Path, name: str, scopes: str | Iterable[str] = ("generate",),
            requests_per_minute: int | None = 60, tokens_per_hour: int | None = None) -> str:
    """Create a key, store its salted hash in `path`, and return the key (shown only this once)."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise CandorError(f"key name {name!r} must be letters, digits, '-', '_' or '.'")
    for label, value in (("--rate-limit", requests_per_minute), ("--token-budget", tokens_per_hour)):
        if value is not None and value < 1:
            raise CandorError(f"{label} must be at least 1 (or left out for no limit), got {value}")
    records = read_keys(path)
    if any(r.name == name for r in records):
        raise CandorError(f"a key named '{name}' already exists in {path}; revoke it first or choose another name")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records.append(KeyRecord(name=name, id=key_id, salt=salt.hex(), hash=hash_secret(salt, secret).hex(),
                             scopes=parse_scopes(scopes), created=created,
                             requests_per_minute=requests_per_minute, tokens_per_hour=tokens_per_hour))
    write_keys(path, records)
    return f"{KEY_PREFIX}{key_id}.{secret}"


def list_keys(path: str | Path) -> list[KeyRecord]:
    path = Path(path)
    if not path.is_file():
        raise CandorError(f"keys file not found: {path}")
    return read_keys(path)


def revoke_key(path: str | Path, name: str) -> KeyRecord:
    records = list_keys(path)
    kept = [r for r in records if r.name != name]
    if len(kept) == len(records):
        names = ", ".join(r.name for r in records) or "none"
        raise CandorError(f"no key named '{name}' in {path} (keys: {names})")
    write_keys(path, kept)
    return next(r for r in records if r.name == name)


class KeyStore:
    """The server's view of a keys file: verifies presented keys, reloads when the file changes.

    A keys file that becomes unreadable while serving fails closed: every key is refused
    until the file is fixed; `error` (and the server's log, never a caller) says why.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CandorError(f"keys file not found: {self.path}; create one with "
                              f"`candorlm keys add NAME --scopes generate --keys {self.path}`")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_id: dict[str, KeyRecord] = {}
        self.error: str | None = None
        self._checked_once = False  # the first check fails `__init__` itself; later ones are logged
        self._decoy_salt = secrets.token_bytes(16)
        self._decoy_hash = hash_secret(self._decoy_salt, secrets.token_urlsafe(32))
        self._refresh()
        if self.error:
            raise CandorError(self.error)
        self._checked_once = True

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            stamp, error = None, f"keys file {self.path} is unreadable ({exc})"
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return
            if stamp is not None:
                try:
                    self._by_id, error = {r.id: r for r in read_keys(self.path)}, None
                except CandorError as exc:
                    self._by_id, error = {}, str(exc)
            else:
                self._by_id = {}
            self._stamp = stamp
            if error != self.error and self._checked_once:  # the details are for the operator, never for callers
                if error:
                    log.error("every API request is refused with a 500 until the keys file is fixed: %s", error)
                elif self.error:
                    log.warning("the keys file %s is usable again", self.path)
            self.error = error

    def usable(self) -> bool:
        """Whether keys can be checked now (False: the file is unreadable or damaged; see `error`)."""
        self._refresh()
        return self.error is None

    def records(self) -> list[KeyRecord]:
        self._refresh()
        return list(self._by_id.values())

    def verify(self, presented: str) -> KeyRecord | None:
        """The record of a valid key, else None; takes the same steps for any wrong key."""
        self._refresh()
        key_id, secret = parse_key(presented)
        record = self._by_id.get(key_id)  # the id is public, like a user name: no secret leaks here
        salt = bytes.fromhex(record.salt) if record else self._decoy_salt
        expected = bytes.fromhex(record.hash) if record else self._decoy_hash
        matches = hmac.compare_digest(hash_secret(salt, secret), expected)
        return record if matches and record is not None else None


# ---------------------------------------------------------------------------- limits


@dataclass
class TokenBucket:
    """Holds up to `capacity` units and refills at `per_second`; taking more than it holds waits."""

    capacity: float
    per_second: float
    level: float = field(default=-1.0)
    stamp: float = 0.0

    def _fill(self, now: float) -> None:
        if self.level < 0:
            self.level, self.stamp = self.capacity, now
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.per_second)
        self.stamp = now

    def take(self, n: float, now: float) -> float:
        """Take n units now and return 0, or take nothing and return the seconds until n are there."""
        self._fill(now)
        if self.level >= n:
            self.level -= n
            return 0.0
        return (n - self.level) / self.per_second

    def give(self, n: float, now: float) -> None:
        self._fill(now)
        self.level = min(self.capacity, self.level + n)


class OverLimit(Exception):
    def __init__(self, message: str, retry_after: int, code: str):
        super().__init__(message)
        self.retry_after, self.code = retry_after, code


class Limiter:
    """Per-key request rate (requests per minute) and token budget (prompt plus completion tokens
    per hour), each a token bucket: a burst of a full minute's (or hour's) allowance is fine,
    then it refills evenly. Held in memory: a restart starts every key with a full allowance."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, table: dict[str, TokenBucket], name: str, capacity: int, window_s: float) -> TokenBucket:
        bucket = table.get(name)
        if bucket is None or bucket.capacity != capacity:
            bucket = table[name] = TokenBucket(capacity, capacity / window_s)
        return bucket

    def check_request(self, key: KeyRecord) -> None:
        if key.requests_per_minute is None:
            return
        with self._lock:
            wait = self._bucket(self._requests, key.name, key.requests_per_minute, 60.0).take(1, self.clock())
        if wait:
            raise OverLimit(f"rate limit of {key.requests_per_minute} requests per minute reached for key "
                            f"'{key.name}'", math.ceil(wait), "rate_limit_exceeded")

    def reserve_tokens(self, key: KeyRecord, n: int) -> None:
        """Take n tokens from the key's hourly budget before generating (unused ones come back)."""
        if key.tokens_per_hour is None:
            return
        if n > key.tokens_per_hour:
            raise ValueError(f"this request may use {n} tokens (prompt plus max_tokens times n), more than key "
                             f"'{key.name}' may use in an hour ({key.tokens_per_hour}); lower max_tokens")
        with self._lock:
            wait = self._bucket(self._tokens, key.name, key.tokens_per_hour, 3600.0).take(n, self.clock())
        if wait:
            raise OverLimit(f"token budget of {key.tokens_per_hour} tokens per hour reached for key '{key.name}'",
                            math.ceil(wait), "token_budget_exceeded")

    def refund_tokens(self, key: KeyRecord, n: int) -> None:
        if key.tokens_per_hour is None or n <= 0:
            return
        with self._lock:
            self._bucket(self._tokens, key.name, key.tokens_per_hour, 3600.0).give(n, self.clock())
