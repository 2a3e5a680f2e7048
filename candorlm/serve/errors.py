"""Errors as OpenAI's API shapes them: {"error": {"message", "type", "param", "code"}}.

Every refusal the server makes goes through `APIError`, so clients (the `openai` package
among them) read the same object for a bad request, a missing key or a rate limit.

What went wrong inside the server (a stack trace, a file path, an exception's text) is never
sent to a caller: they get a generic 500 naming the request id, and the details go to the
server's log under that id (`ContainErrors`).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# The `type` field, by status: what OpenAI's own API sends.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def internal_error(request_id: str | None = None) -> APIError:
    """The one answer to a failure inside the server: nothing of the failure itself."""
    where = f" under request id {request_id}" if request_id else ""
    return APIError(500, f"The server had an error while processing the request. Its operator can find the "
                         f"details in the server's log{where}.", code="internal_error")


def request_id(scope: Scope) -> str | None:
    """The id the audit log gives this request (also sent back as X-Request-ID), if any."""
    audit = scope.get("state", {}).get("audit")
    return audit.get("request_id") if isinstance(audit, dict) else None


class ContainErrors:
    """ASGI middleware: an exception no handler expected becomes `internal_error()` for the caller
    and a traceback, with the method, path and request id, in the server's log. Once an answer has
    begun (a stream) nothing more can be sent: the connection is closed and the log says why."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            rid = request_id(scope)
            log.exception("%s %s failed%s%s", scope.get("method"), scope.get("path"), f" ({rid})" if rid else "",
                          "; the answer had begun, so the connection was closed" if started else "")
            if not started:
                await internal_error(rid).response()(scope, receive, send)
