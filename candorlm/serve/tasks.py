"""Serving a fine-tuned run that is not a language model: a sentiment classifier or a translator.

    POST /v1/classifications   sentiment runs: {"model", "input": text or list} -> a label per text
    POST /v1/completions       translate runs: {"model", "prompt": text or list} -> the translations,
                               as an OpenAI text completion (so OpenAI clients can call it)
    GET  /v1/models            the served model (and /v1/models/{id})
    GET  /health               liveness, whether keys are needed

The guards are the language-model server's, in the same order (candorlm/serve/app.py): the
Host check against DNS rebinding, the body limit, API keys and their scopes (both routes need
`generate`), rate limits, the audit log, and errors that never show internals. Chat and QA runs
are decoders, served by the language-model server (`/v1/chat/completions`).
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from candorlm.errors import CandorError
from candorlm.serve.app import known_query_only
from candorlm.serve.audit import AuditLog, AuditMiddleware
from candorlm.serve.auth import KeyStore, Limiter
from candorlm.serve.errors import APIError, ContainErrors
from candorlm.serve.gate import AccessGate, BodyLimit
from candorlm.serve.handlers import install_error_handlers
from candorlm.serve.hosts import HostCheck, HostPolicy
from candorlm.serve.openapi import responses
from candorlm.serve.schemas import ServeLimits, Text, _Body

ROUTES = {"sentiment": "/v1/classifications", "translate": "/v1/completions"}


class ClassificationRequest(_Body):
    model: Text
    input: Text | list[Text] = Field(description="A text, or a list of texts, to classify.")


class TranslationRequest(_Body):
    model: Text
    prompt: Text | list[Text] = Field(description="A source text, or a list of them, to translate.")


def _texts(value: str | list[str], param: str, most: int) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts or any(not t.strip() for t in texts):
        raise APIError(400, f"{param} needs at least one non-empty text", param=param)
    if len(texts) > most:
        raise APIError(400, f"{len(texts)} texts given; at most {most} per request", param=param)
    return texts


def create_task_app(model: Any, *, model_name: str, keys: KeyStore | None = None, audit: AuditLog | None = None,
                    limits: ServeLimits | None = None, limiter: Limiter | None = None,
                    hosts: HostPolicy | None = None) -> FastAPI:
    """The ASGI app serving `model`, a `candorlm.tasks.predict.TaskModel` of a sentiment or a
    translate run (see the module doc)."""
    if model.task not in ROUTES:
        raise CandorError(f"{model.run} is a {model.task} run; the task server serves sentiment and translate runs "
                          f"(a {model.task} run is a decoder: serve it as a language model)")
    limits = limits or ServeLimits()
    hosts = hosts or HostPolicy.for_bind("127.0.0.1")
    lock = threading.Lock()  # one prediction at a time: each one already uses every core
    created = int(time.time())
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if audit is not None:
            audit.close()

    app = FastAPI(title="candorlm", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"A fine-tuned {model.task} run served by candorlm.")
    app.add_middleware(AccessGate, keys=keys, limiter=limiter or Limiter())
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(HostCheck, policy=hosts)
    app.add_middleware(ContainErrors)
    app.add_middleware(AuditMiddleware, log=audit)
    install_error_handlers(app)
    api = APIRouter(dependencies=[Depends(known_query_only)])

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{model_name}' "
                                f"(see GET /v1/models)", code="model_not_found", param="model")

    def predict(texts: list[str], request: Request) -> list[dict[str, Any]]:
        audit_record = getattr(request.state, "audit", {})
        audit_record.update(model=model_name, inputs=len(texts))
        try:
            with lock:
                return model.predict(texts)
        except CandorError as exc:
            raise APIError(400, str(exc)) from None

    errors = responses(400, 401, 403, 404, 413, 429, 500)
    if model.task == "sentiment":
        @api.post("/v1/classifications", summary="Classify texts", responses=errors)
        async def classifications(body: ClassificationRequest, request: Request) -> Any:
            check_model(body.model)
            texts = _texts(body.input, "input", limits.max_prompts)
            out = await run_in_threadpool(predict, texts, request)
            return JSONResponse({"object": "list", "model": model_name,
                                 "data": [{"object": "classification", "index": i, **o} for i, o in enumerate(out)]})
    else:
        @api.post("/v1/completions", summary="Translate texts (an OpenAI text completion)", responses=errors)
        async def completions(body: TranslationRequest, request: Request) -> Any:
            check_model(body.model)
            texts = _texts(body.prompt, "prompt", limits.max_prompts)
            out = await run_in_threadpool(predict, texts, request)
            src = model.source_tokenizer or model.tokenizer
            prompt_tokens = sum(len(src.encode(t)) for t in texts)
            completion_tokens = sum(len(model.tokenizer.encode(o["translation"])) for o in out)
            return JSONResponse({
                "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": i, "text": o["translation"], "finish_reason": "stop", "logprobs": None}
                            for i, o in enumerate(out)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}})

    def card() -> dict[str, Any]:
        cfg = model.config.model
        return {"id": model_name, "object": "model", "created": created, "owned_by": "candorlm", "task": model.task,
                "context_length": cfg.max_seq_len, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads}

    @api.get("/v1/models", responses=responses(400, 401, 429, 500))
    async def models() -> Any:
        return {"object": "list", "data": [card()]}

    @api.get("/v1/models/{model_id}", responses=responses(400, 401, 404, 429, 500))
    async def one_model(model_id: str) -> Any:
        check_model(model_id)
        return card()

    @api.get("/health", responses=responses(400, 500))
    async def health() -> Any:
        return {"status": "ok", "model": model_name, "task": model.task, "auth": keys is not None}

    app.include_router(api)
    return app
