"""The HTTP side of access control: which scope each path needs, the key check, the request
rate limit, and the body size limit. Both run as ASGI middleware, before any body is parsed,
so a caller without a valid key learns nothing about what the endpoint would have accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candorlm.serve.auth import KeyRecord, KeyStore, Limiter, OverLimit
from candorlm.serve.errors import APIError, internal_error

# Paths under /v1 and the scope each needs; any other /v1 path needs a valid key of any scope.
PATH_SCOPES: list[tuple[str, str]] = [
    ("/v1/completions", "generate"), ("/v1/chat/completions", "generate"), ("/v1/classifications", "generate"),
    ("/v1/explain", "explain"),
    ("/v1/admin", "admin"),
]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's record, or nobody in particular when auth is off."""

    record: KeyRecord | None

    @property
    def name(self) -> str | None:
        return self.record.name if self.record else None


def required_scope(path: str) -> tuple[bool, str | None]:
    """(needs a key, scope) for a path: everything under /v1 needs a key; pages, assets,
    /health and the schema are open."""
    if not (path == "/v1" or path.startswith("/v1/")):
        return False, None
    for prefix, scope in PATH_SCOPES:
        if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
            return True, scope
    return True, None


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if kind.lower() == "bearer" and token.strip() else None
    return None


class AccessGate:
    """Refuses a request without a valid key (401), with a key lacking the path's scope (403), or
    over its key's request rate (429 with Retry-After); while the keys file is unusable, every
    request under /v1 (a generic 500). With no key store, everyone may call."""

    def __init__(self, app: ASGIApp, keys: KeyStore | None, limiter: Limiter):
        self.app, self.keys, self.limiter = app, keys, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protected, needed = required_scope(scope["path"])
        state = scope.setdefault("state", {})
        if not protected or self.keys is None:
            state["principal"] = Principal(None)
            await self.app(scope, receive, send)
            return
        try:
            record = self._check(scope, needed, state.get("audit", {}))
        except APIError as err:
            await err.response()(scope, receive, send)
            return
        state["principal"] = Principal(record)
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, needed: str | None, audit: dict) -> KeyRecord:
        assert self.keys is not None
        if not self.keys.usable():  # fail closed; what is wrong with the file is for the server's log only
            raise internal_error(audit.get("request_id"))
        token = bearer_token(scope)
        challenge = {"WWW-Authenticate": "Bearer"}
        if token is None:
            raise APIError(401, "no API key: send the header 'Authorization: Bearer <key>' "
                                "(keys come from `candorlm keys add`)", code="missing_api_key", headers=challenge)
        record = self.keys.verify(token)
        if record is None:
            raise APIError(401, "invalid API key", code="invalid_api_key", headers=challenge)
        audit["key"] = record.name  # known from here on, refused or not
        if needed is not None and not record.allows(needed):
            raise APIError(403, f"key '{record.name}' lacks the '{needed}' scope this endpoint needs "
                                f"(it has: {', '.join(record.scopes)})", code="insufficient_scope")
        try:
            self.limiter.check_request(record)
        except OverLimit as over:
            raise APIError(429, str(over), code=over.code, headers={"Retry-After": str(over.retry_after)}) from None
        return record


class BodyLimit:
    """413 for a body larger than `max_bytes`, by its Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(int(value)).response()(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI passes HTTPException through its body parsing; our handler shapes it.
                    raise HTTPException(413, self._refuse(seen).message)
            return message

        await self.app(scope, counting_receive, send)

    def _refuse(self, size: int) -> APIError:
        return APIError(413, f"request body of {size:,}+ bytes is over the limit of {self.max_bytes:,} bytes",
                        code="request_too_large")
