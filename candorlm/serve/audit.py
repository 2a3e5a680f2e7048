"""The audit log: one JSON line per API call, saying who called what, when, and what it cost.

    {"time": "2026-11-30T10:39:00.123Z", "request_id": "req-...", "key": "alice", "client": "127.0.0.1",
     "method": "POST", "path": "/v1/chat/completions", "status": 200, "duration_ms": 412,
     "model": "pd", "stream": true, "prompt_tokens": 31, "completion_tokens": 64, "finish_reason": "length"}

Prompt and completion text are written only when the operator asks (`--audit-text`); by
default the log holds who, what and how much, never what was said. A client that goes away
mid-answer is logged with "cancelled": true. The handlers add their fields to
`request.state.audit`; this middleware writes the line when the response is done.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AuditLog:
    """Appends JSON lines to a file (created with mode 0600), one write per record, thread-safe."""

    def __init__(self, path: str | Path, include_text: bool = False):
        self.path = Path(path)
        self.include_text = include_text
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if not self.include_text:
            record = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
        line = json.dumps(record, ensure_ascii=False, default=str)
        # JSON may hold U+2028, U+2029 and U+0085 raw, but many line readers split on them.
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085") + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:  # never a line half written
            lines = self.path.read_text(encoding="utf-8").split("\n")
        return [json.loads(line) for line in (lines[-limit:] if limit else lines) if line]


class AuditMiddleware:
    """Writes one record per request under `prefix` once the response has been sent (or abandoned)."""

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
            await self.app(scope, receive, send_and_watch)
        finally:
            if not done:
                record["cancelled"] = True
            record["duration_ms"] = round(1000 * (time.perf_counter() - started), 1)
            self.log.write(record)
