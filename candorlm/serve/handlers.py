"""FastAPI's exception handlers: every refusal and failure as OpenAI's error object.

A request FastAPI cannot read (bad JSON, wrong types, too deep, not UTF-8) is a 400 that says
which; a failure nobody expected is `internal_error()` and nothing more.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from candorlm.serve.errors import APIError, error_body, internal_error, request_id


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Exception)  # only what escapes ContainErrors (a failure in the audit middleware itself)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request_id(request.scope)).response()

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe(exc.errors())
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = _unreadable_body(exc.__cause__)
        code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(exc.status_code, message, code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))


def _unreadable_body(cause: BaseException | None) -> str:
    """What FastAPI's "error parsing the body" was, from the exception it wraps."""
    if isinstance(cause, RecursionError):
        return ("the request body nests arrays or objects too deeply to be read (JSON is read to a depth of "
                "about a thousand levels); send a flatter body")
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not UTF-8 text ({cause.reason} at byte {cause.start}); send JSON encoded as UTF-8"
    return "the request body is not valid JSON"


def _describe(errors: Any) -> tuple[str, str | None]:
    """A readable message and the offending parameter from pydantic's error list."""
    errors = list(errors)
    if not errors:
        return "invalid request", None
    first = errors[0]
    # Drop "body" and pydantic's names for union members ("str", "list[TextPart]", "function-after[...]").
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", None
    if first.get("type") == "missing" and not loc:
        return "the request needs a JSON body", None
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    return f"{where}{first.get('msg', 'invalid value')}{more}", param


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none"))
