"""The audit log: one JSON line per API call, saying who called what, when, and what it cost.

    {"time": "2026-11-30T10:39:00.123Z", "request_id": "req-...", "key": "alice", "client": "127.0.0.1",
     "method": "POST", "path": "/v1/chat/completions", "status": 200, "duration_ms": 412,
     "model": "pd", "stream": true, "prompt_tokens": 31, "completion_tokens": 64, "finish_reason": "length"}

Prompt and completion text are written only when the operator asks (`--audit-text`); by
default the log holds who, what and how much, never what was said. A client that goes away
mid-answer is logged with "cancelled": true. The handlers add their fields to
`request.state.audit`; this middleware writes the line when the response is done.

What the log promises: a log that cannot be written at start (a directory, a file that is not
an audit log, no permission) stops the server before it listens. Each record is appended with
one write and fsynced. A record is written when its answer is done, so a write that fails
while serving cannot change that answer; from then on the server refuses every API request
with a 500 (and /health says so) and keeps the unwritten records in memory (up to
`MAX_HELD_BYTES`), retrying at each request: once the log can be written again, the held records
go first and serving resumes, with no gap. Records still held when the server stops are
lost, and the server's log says how many.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candorlm.errors import CandorError
from candorlm.io.sealed import is_encrypted, tree_holding
from candorlm.serve.errors import APIError

log = logging.getLogger(__name__)
MAX_HELD_BYTES = 16 << 20
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def unavailable() -> APIError:
    return APIError(500, "The server cannot write its audit log, so it answers no API request until its operator "
                         "fixes that (the server's log says why); retry later.", code="audit_log_unavailable")


class AuditLog:
    """Appends JSON lines to a file (created with mode 0600), one write per record, thread-safe.
    Checked when opened: a CandorError says why a path cannot be the audit log."""

    def __init__(self, path: str | Path, include_text: bool = False):
        self.path = Path(path)
        self.include_text = include_text
        self._lock = threading.Lock()
        self._held = bytearray()  # records not yet written: the log is failing
        self.dropped = 0  # records lost because too many were held
        self.error: str | None = None  # why the last write failed, while it keeps failing
        self._open_checked()

    def _open_checked(self) -> None:
        path = self.path
        if path.is_dir():
            raise CandorError(f"the audit log {path} is a directory; give a file path, e.g. --audit-log "
                              f"{path / 'audit.jsonl'}")
        if path.exists() and not path.is_file():
            raise CandorError(f"the audit log {path} is not a regular file; give a file path with --audit-log")
        tree = tree_holding(path)
        if tree is not None:  # a plain log there leaks what was asked, and the tree no longer decrypts
            raise CandorError(f"the audit log {path} would be written as plain text inside the encrypted tree {tree}; "
                              f"give --audit-log a path outside it")
        if path.is_file() and path.stat().st_size:
            if is_encrypted(path):
                raise CandorError(f"the audit log {path} is encrypted; give --audit-log a new path (the log is "
                                  f"written as plain text)")
            if not _starts_like_a_log(path):
                raise CandorError(f"{path} is not a candorlm audit log (its first line is not an audit record); give "
                                  f"another --audit-log path, so that nothing is added to a file of yours")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, _APPEND, 0o600))
        except (FileExistsError, NotADirectoryError):
            raise CandorError(f"the audit log {path} cannot be created: a part of its path is a file, not a folder; "
                              f"give another path with --audit-log") from None
        except OSError as exc:
            raise CandorError(f"the audit log {path} cannot be written ({exc.strerror or exc}); give a writable "
                              f"path with --audit-log") from None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; on failure hold it (see the module docstring). Never raises OSError."""
        if not self.include_text:
            record = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
        line = json.dumps(record, ensure_ascii=False, default=str)
        # JSON may hold U+2028, U+2029 and U+0085 raw, but many line readers split on them.
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085") + "\n"
        # A lone surrogate (only inside a JSON string here) becomes its JSON escape, e.g. \udc80.
        data = line.encode("utf-8", "backslashreplace")
        with self._lock:
            if len(self._held) + len(data) > MAX_HELD_BYTES:
                self.dropped += 1
                log.error("audit record %s lost: %d bytes of records are already waiting for %s",
                          record.get("request_id"), len(self._held), self.path)
                return
            self._held += data
            self._flush()

    def failing(self) -> bool:
        """True while the log cannot be written (each call tries the held records again)."""
        if self.error is None:
            return False
        with self._lock:
            return not self._flush()

    def _flush(self) -> bool:
        """Write the held records (under the lock). A write cut short keeps the rest held, so the
        file never gets a line twice."""
        if not self._held:
            return True
        try:
            fd = os.open(self.path, _APPEND, 0o600)
            try:
                while self._held:
                    del self._held[:os.write(fd, self._held)]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if self.error is None:
                log.error("AUDIT LOG FAILING: cannot write %s (%s). Every API request is refused with a 500 until "
                          "it can be written; the records meanwhile are held in memory", self.path, exc)
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        if self.error is not None:
            log.warning("the audit log %s can be written again; the held records are in it and serving resumes",
                        self.path)
            self.error = None
        return True

    def close(self) -> None:
        """At shutdown: a last try at the held records; say how many are lost."""
        with self._lock:
            self._flush()
            lost = self._held.count(b"\n") + self.dropped
        if lost:
            log.error("%d audit records could not be written to %s and are lost", lost, self.path)

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:  # never a line half written
            lines = self.path.read_text(encoding="utf-8").split("\n")
        return [json.loads(line) for line in (lines[-limit:] if limit else lines) if line]


def _starts_like_a_log(path: Path) -> bool:
    """Whether the first line is one of our records (a JSONL corpus of the user's starts with an
    object too, so a JSON object alone does not make a log)."""
    with path.open("rb") as f:
        first = f.readline(1 << 20)
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and {"time", "request_id", "method", "path"} <= record.keys() and \
        str(record["request_id"]).startswith("req-")


class AuditMiddleware:
    """Writes one record per request under `prefix` once the response has been sent (or abandoned);
    while the log cannot be written, answers every such request with a 500 instead."""

    def __init__(self, app: ASGIApp, log: AuditLog | None, prefix: str = "/v1/"):
        self.app, self.log, self.prefix = app, log, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.log is None or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        record: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": f"req-{uuid.uuid4().hex[:16]}", "key": None,
            "client": client[0] if client else None, "method": scope["method"], "path": scope["path"],
        }
        scope.setdefault("state", {})["audit"] = record
        done = False

        async def send_and_watch(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", record["request_id"].encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done = True

        try:
            if self.log.error is not None and await run_in_threadpool(self.log.failing):
                record["refused"] = "audit log unwritable"
                await unavailable().response()(scope, receive, send_and_watch)
            else:
                await self.app(scope, receive, send_and_watch)
        finally:
            if not done:
                record["cancelled"] = True
            record["duration_ms"] = round(1000 * (time.perf_counter() - started), 1)
            # Off the event loop (it fsyncs), and finished even if this request is cancelled meanwhile.
            await asyncio.shield(asyncio.ensure_future(run_in_threadpool(self.log.write, record)))
