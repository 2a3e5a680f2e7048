"""The API's OpenAPI schema: documented errors and streams, and this server's own limits.

Validation errors are 400s in OpenAI's shape (not FastAPI's 422s); each limit a request can
break (model name, n, max_tokens, stop strings, prompts, layers, heads) is written into the
request schemas, so clients and fuzzers see what will be accepted.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from candorlm.serve import schemas as S
from candorlm.serve.schemas import ServeLimits

ERRORS = {400: "The request is invalid (the message says what and how to fix it), or its Host header is not "
               "one this server answers to (code invalid_host).",
          401: "No API key, or an invalid one.", 403: "The key lacks the scope this endpoint needs.",
          404: "Unknown model.", 413: "The request body is over the size limit.",
          429: "Over the key's request rate or token budget; retry after Retry-After seconds.",
          500: "The server failed; the message names the request id its operator can look up. Code "
               "audit_log_unavailable: the audit log cannot be written, and every API request is refused until it can.",
          503: "Too many requests are waiting; retry shortly."}


def responses(*codes: int, stream: type | None = None) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {c: {"model": S.ErrorResponse, "description": ERRORS[c]} for c in codes}
    if 429 in codes or 503 in codes:
        for c in (429, 503):
            if c in out:
                out[c]["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    if stream is not None:
        out[200] = {"description": "JSON, or with stream: true server-sent events, each `data: <chunk JSON>`, "
                                   "then `data: [DONE]`.",
                    "content": {"text/event-stream": {"schema": _event_schema(stream)}}}
    return out


def _event_schema(chunk: type) -> dict[str, Any]:
    """One server-sent event: its data is a chunk (or an error object) as JSON, or [DONE]."""
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{chunk.__name__}"},
                         {"$ref": "#/components/schemas/ErrorResponse"}]}
    return {"type": "object", "required": ["data"],
            "properties": {"data": {"anyOf": [{"const": "[DONE]"},
                                              {"type": "string", "contentMediaType": "application/json",
                                               "contentSchema": payload}]}}}


def openapi(app: FastAPI, *, model_name: str, limits: ServeLimits, context: int, n_layers: int, n_heads: int,
            keyed: bool) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    # Validation errors are 400s in OpenAI's shape, not FastAPI's 422s.
    for path in schema["paths"].values():
        for op in path.values():
            op.get("responses", {}).pop("422", None)
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    for model in (S.CompletionChunk, S.ChatChunk):  # named by the streaming responses' event schema
        chunk = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components["schemas"].update(chunk.pop("$defs", {}))
        components["schemas"][model.__name__] = chunk
    _publish_limits(components["schemas"], model_name, limits, context, n_layers, n_heads)
    if keyed:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for route, path in schema["paths"].items():
            if route.startswith("/v1/"):
                for op in path.values():
                    op["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema


def _publish_limits(schemas: dict[str, Any], model_name: str, limits: ServeLimits, context: int, n_layers: int,
                    n_heads: int) -> None:
    """Write this server's limits (model name, n, max_tokens, stop strings, prompts, layers and
    heads) into the request schemas, so clients and fuzzers see what will be accepted. Token
    counts (prompt plus max_tokens within the context) depend on tokenization: JSON Schema
    cannot state them, and they are refused with code 'context_length_exceeded'."""
    most_tokens = min(limits.max_tokens, context - 1)

    def constrain(model: str, field: str, **rules: Any) -> None:
        prop = schemas[model]["properties"][field]
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        for branch in branches:
            kind = branch.get("type")
            branch.update({k: v for k, v in rules.items()
                           if (k in ("maxItems", "minItems")) == (kind == "array")})

    for model in ("CompletionRequest", "ChatRequest", "ExplainRequest"):
        schemas[model]["properties"]["model"] = {"type": "string", "enum": [model_name], "title": "Model"}
    for model in ("CompletionRequest", "ChatRequest"):
        constrain(model, "n", maximum=limits.max_n)
        constrain(model, "max_tokens", maximum=most_tokens)
        constrain(model, "stop", maxItems=limits.max_stop)
    constrain("ChatRequest", "max_completion_tokens", maximum=most_tokens)
    constrain("CompletionRequest", "prompt", minItems=1, maxItems=limits.max_prompts)
    constrain("ExplainRequest", "layer", maximum=n_layers - 1)
    constrain("ExplainRequest", "head", maximum=n_heads - 1)
