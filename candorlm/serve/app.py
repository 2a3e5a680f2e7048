"""The HTTP server: OpenAI-compatible endpoints, the explain endpoint, and the chat page.

    POST /v1/completions        text completion (stream: true for server-sent events)
    POST /v1/chat/completions   chat completion, the same
    POST /v1/explain            attribution and attention for a prompt and target
    GET  /v1/models             the served model (and /v1/models/{id})
    GET  /v1/admin/keys         keys, their limits and usage since start (admin scope)
    GET  /v1/admin/audit        the newest audit records (admin scope)
    GET  /health                liveness, whether keys are needed, engine load
    GET  /openapi.json          the schema
    GET  /                      the chat page (assets bundled, no CDN)

Every refusal is an OpenAI-style error object with a 4xx status. A 500 says only that the server
failed (a bug, an unusable keys file, an audit log that cannot be written) and names the request
id; what failed goes to the server's log, never to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from candorlm.errors import CandorError
from candorlm.generate import SamplingConfig
from candorlm.lm import LanguageModel
from candorlm.serve import schemas as S
from candorlm.serve.schemas import ServeLimits
from candorlm.serve.audit import AuditLog, AuditMiddleware, unavailable
from candorlm.serve.auth import KeyStore, Limiter, OverLimit
from candorlm.serve.chat import chat_prompt_ids, chat_stop_ids
from candorlm.serve.engine import Engine, EngineBusy
from candorlm.serve.errors import APIError, ContainErrors, error_body, request_id
from candorlm.serve.gate import AccessGate, BodyLimit, Principal
from candorlm.serve.generation import Generation, Outcome, Plan
from candorlm.serve.handlers import install_error_handlers
from candorlm.serve.hosts import HostCheck, HostPolicy
from candorlm.serve.openapi import openapi, responses
from candorlm.serve.why import explain_token, token_labels

log = logging.getLogger(__name__)
UI_DIR = Path(__file__).with_name("ui")


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Service:
    """What the endpoints share: the model, its engine, the limits and the bookkeeping."""

    lm: LanguageModel
    engine: Engine
    model_name: str
    limits: ServeLimits
    limiter: Limiter
    keys: KeyStore | None
    audit: AuditLog | None
    created: int = 0
    usage: dict[str, Usage] = field(default_factory=dict)
    explain_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context(self) -> int:
        return self.engine.max_len

    # ---------------------------------------------------------------- checks
    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}' "
                                f"(see GET /v1/models)", code="model_not_found", param="model")

    def check_common(self, body: S._Sampling) -> None:
        self.check_model(body.model)
        unsupported = body.unsupported()
        if unsupported:
            raise APIError(400, f"'{unsupported}' is not supported by candorlm; leave it out", param=unsupported,
                           code="unsupported_parameter")
        if body.n > self.limits.max_n:
            raise APIError(400, f"n is {body.n}; this server allows at most {self.limits.max_n}", param="n")
        if len(body.stop_list) > self.limits.max_stop:
            raise APIError(400, f"{len(body.stop_list)} stop strings given; at most {self.limits.max_stop}",
                           param="stop")

    def check_prompt(self, ids: list[int], max_tokens: int, param: str) -> None:
        limit = self.limits.max_prompt_tokens or self.context - 1
        if len(ids) > limit:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this server accepts at most {limit}",
                           param=param, code="context_length_exceeded")
        if max_tokens > self.limits.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {self.limits.max_tokens}",
                           param="max_tokens")
        if len(ids) + max_tokens > self.context:
            raise APIError(400, f"This model's maximum context length is {self.context} tokens. However, you "
                                f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} "
                                f"for the completion). Shorten the prompt or lower max_tokens.",
                           param=param, code="context_length_exceeded")

    def logit_bias(self, body: S._Sampling) -> dict[int, float]:
        bias = {int(k): v for k, v in (body.logit_bias or {}).items()}
        vocab = self.lm.tokenizer.vocab_size
        wrong = sorted(k for k in bias if k >= vocab)
        if wrong:
            raise APIError(400, f"logit_bias names token id {wrong[0]}; this model's vocabulary has ids 0 to {vocab - 1}",
                           param="logit_bias", code="invalid_logit_bias")
        return bias

    def sampling(self, body: S._Sampling, max_tokens: int) -> SamplingConfig:
        temperature = 1.0 if body.temperature is None else body.temperature
        return SamplingConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=body.top_k, top_p=body.top_p,
                              seed=body.seed,
                              repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty)

    # ---------------------------------------------------------------- plans
    def plan_completion(self, body: S.CompletionRequest) -> Plan:
        self.check_common(body)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise APIError(400, "prompt is an empty list; give a string or a list of strings", param="prompt")
        if len(texts) > self.limits.max_prompts:
            raise APIError(400, f"{len(texts)} prompts given; at most {self.limits.max_prompts} per request",
                           param="prompt")
        prompts = [self.lm.encode_prompt(t) for t in texts]
        if any(not p for p in prompts):
            raise APIError(400, "an empty prompt has no tokens for this model (its tokenizer has no <|bos|>)",
                           param="prompt")
        explicit = body.max_tokens is not None
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        if not explicit:  # OpenAI's default of 16, shortened to what the context leaves
            max_tokens = max(1, min(max_tokens, self.context - max(len(p) for p in prompts)))
        for p in prompts:
            self.check_prompt(p, max_tokens, "prompt")
        stop_ids = frozenset([self.lm.tokenizer.eos_id] if self.lm.tokenizer.eos_id is not None else [])
        return Plan("completion", self.model_name, prompts, body.n, self.sampling(body, max_tokens), stop_ids,
                    tuple(s for s in body.stop_list if s), self.logit_bias(body))

    def chat_ids(self, messages: list[S.ChatMessage]) -> list[int]:
        try:
            return chat_prompt_ids(self.lm.tokenizer, [(m.role, m.text) for m in messages])
        except CandorError as exc:
            raise APIError(400, str(exc), param="messages") from None

    def plan_chat(self, body: S.ChatRequest) -> Plan:
        self.check_common(body)
        ids = self.chat_ids(body.messages)
        asked = body.max_completion_tokens or body.max_tokens
        max_tokens = asked if asked is not None else max(1, min(self.limits.max_tokens, self.context - len(ids)))
        self.check_prompt(ids, max_tokens, "messages")
        return Plan("chat", self.model_name, [ids], body.n, self.sampling(body, max_tokens),
                    chat_stop_ids(self.lm.tokenizer), tuple(s for s in body.stop_list if s), self.logit_bias(body))

    # ---------------------------------------------------------------- running
    async def respond(self, request: Request, plan: Plan, body: S._Sampling) -> Any:
        principal: Principal = request.state.principal
        audit: dict[str, Any] = getattr(request.state, "audit", {})
        audit.update(model=plan.model, stream=body.stream, prompt_tokens=plan.prompt_tokens)
        if principal.record is not None:
            try:
                self.limiter.reserve_tokens(principal.record, plan.most_tokens)
            except OverLimit as over:
                raise APIError(429, str(over), code=over.code, headers={"Retry-After": str(over.retry_after)}) from None
            except ValueError as exc:
                raise APIError(400, str(exc), param="max_tokens", code="token_budget_exceeded") from None
        generation = Generation(self.engine, plan, request_id(request.scope))
        generation.on_done.append(lambda outcome: self._settle(principal, plan, outcome, audit))
        try:
            generation.submit()
        except EngineBusy as exc:
            self._settle(principal, plan, Outcome(), audit)
            raise APIError(503, str(exc), code="overloaded", headers={"Retry-After": "1"}) from None
        except CandorError as exc:
            self._settle(principal, plan, Outcome(), audit)
            raise APIError(400, str(exc)) from None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(generation.sse(include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        outcome = await until_disconnect(request, generation.collect())
        if outcome is None:  # the client left (its jobs are cancelled); nobody reads this answer
            audit["cancelled"] = True
            return JSONResponse(error_body(499, "client closed the request"), status_code=499)
        if outcome.error:  # the engine has logged what failed
            raise generation.failure()
        return JSONResponse(generation.response())

    def _settle(self, principal: Principal, plan: Plan, outcome: Outcome, audit: dict[str, Any]) -> None:
        """After a request: give back unused budget, count usage, fill in the audit record."""
        used = plan.prompt_tokens + outcome.completion_tokens
        if principal.record is not None:
            self.limiter.refund_tokens(principal.record, plan.most_tokens - used)
        usage = self.usage.setdefault(principal.name or "anonymous", Usage())
        usage.requests += 1
        usage.prompt_tokens += plan.prompt_tokens
        usage.completion_tokens += outcome.completion_tokens
        reasons = [outcome.finish[i] for i in sorted(outcome.finish)]
        audit.update(completion_tokens=outcome.completion_tokens, choices=plan.choices,
                     finish_reason=reasons[0] if len(reasons) == 1 else reasons)
        if self.audit is not None and self.audit.include_text:
            prompts = [self.lm.tokenizer.decode(p, skip_special=False) for p in plan.prompts]
            audit.update(prompt=prompts[0] if len(prompts) == 1 else prompts,
                         completion=[outcome.texts.get(i, "") for i in range(plan.choices)])

    def explain(self, body: S.ExplainRequest) -> dict[str, Any]:
        self.check_model(body.model)
        tok = self.lm.tokenizer
        prompt = self.chat_ids(body.messages) if body.messages is not None else self.lm.encode_prompt(body.prompt or "")
        if not prompt:
            raise APIError(400, "the prompt has no tokens", param="prompt")
        target = tok.encode(body.target)
        if body.target_index >= len(target):
            raise APIError(400, f"target_index {body.target_index} is past the target's {len(target)} tokens",
                           param="target_index", code="target_index_out_of_range")
        ids = prompt + target
        position = len(prompt) + body.target_index
        # What comes after the explained token cannot have caused it: the model reads up to it only.
        limit = min(self.limits.max_explain_tokens, self.context)
        if position + 1 > limit:
            raise APIError(400, f"the explained token is token {position + 1} of prompt and target; explain reads "
                                f"at most {limit}", param="target_index", code="context_length_exceeded")
        cfg = self.lm.model.cfg
        for name, value, count in (("layer", body.layer, cfg.n_layers), ("head", body.head, cfg.n_heads)):
            if value >= count:
                raise APIError(400, f"{name} {value} does not exist; the model has {name}s 0..{count - 1}", param=name)
        with self.explain_lock:  # one at a time: each takes a forward and a backward pass
            result = explain_token(self.lm.model, ids[:position + 1], position, body.layer, body.head)
        labels = token_labels(tok, ids)
        return {
            "object": "explanation", "model": self.model_name,
            "tokens": [{"id": i, "text": t, "source": "prompt" if k < len(prompt) else "target"}
                       for k, (i, t) in enumerate(zip(ids, labels))],
            "position": position, "target_index": body.target_index, "target_tokens": len(target),
            "token": {"id": result.token_id, "text": labels[position], "logit": round(result.logit, 6),
                      "probability": result.probability, "rank": result.rank},
            "attribution": {"method": "gradient_x_input", "of": "logit",
                            "scores": [round(s, 6) for s in result.attribution]},
            "attention": {"layer": body.layer, "head": body.head, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                          "query": position - 1, "pattern": [[round(p, 5) for p in row] for row in result.pattern]},
        }


async def until_disconnect(request: Request, work: Any) -> Any:
    """Await `work`, unless the client disconnects first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # let it cancel its jobs and settle its accounts before the request ends
    return None


async def known_query_only(request: Request) -> None:
    """A query parameter the endpoint does not define is a 400, not silently ignored."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    allowed = {p.alias for p in dependant.query_params} if dependant is not None else set()
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise APIError(400, f"unknown query parameter {unknown[0]!r}", param=unknown[0])


def create_app(lm: LanguageModel, *, model_name: str, keys: KeyStore | None = None, audit: AuditLog | None = None,
               limits: ServeLimits | None = None, max_batch: int = 16, limiter: Limiter | None = None,
               hosts: HostPolicy | None = None) -> FastAPI:
    """The ASGI app serving `lm`. With `keys`, every /v1 call needs a key with the right scope.
    Every request's Host header must be one `hosts` allows (default: a loopback server's
    localhost, 127.0.0.1 and [::1]; see hosts.py)."""
    limits = limits or ServeLimits()
    hosts = hosts or HostPolicy.for_bind("127.0.0.1")
    engine = Engine(lm.model, lm.tokenizer, max_batch=max_batch).start()
    service = Service(lm, engine, model_name, limits, limiter or Limiter(), keys, audit, created=int(time.time()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()
        if audit is not None:
            audit.close()

    app = FastAPI(title="candorlm", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible completions and chat, plus explanations, for a candorlm run.")
    app.state.service = service
    app.state.engine = engine
    # Outermost last: the audit log sees every answer, refusals and failures too.
    app.add_middleware(AccessGate, keys=keys, limiter=service.limiter)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(HostCheck, policy=hosts)
    app.add_middleware(ContainErrors)
    app.add_middleware(AuditMiddleware, log=audit)
    install_error_handlers(app)

    gen_errors = (400, 401, 403, 404, 413, 429, 500, 503)
    api = APIRouter(dependencies=[Depends(known_query_only)])

    @api.post("/v1/completions", response_model=S.CompletionResponse, summary="Complete a prompt",
              responses=responses(*gen_errors, stream=S.CompletionChunk))
    async def completions(body: S.CompletionRequest, request: Request) -> Any:
        return await service.respond(request, service.plan_completion(body), body)

    @api.post("/v1/chat/completions", response_model=S.ChatResponse, summary="Answer a conversation",
              responses=responses(*gen_errors, stream=S.ChatChunk))
    async def chat_completions(body: S.ChatRequest, request: Request) -> Any:
        return await service.respond(request, service.plan_chat(body), body)

    @api.post("/v1/explain", response_model=S.ExplainResponse, responses=responses(400, 401, 403, 404, 413, 429, 500),
              summary="Why the model gives a target token: attribution over the prompt, attention of one head")
    async def explain(body: S.ExplainRequest, request: Request) -> Any:
        return JSONResponse(await run_in_threadpool(service.explain, body))

    def model_card() -> dict[str, Any]:
        cfg = lm.model.cfg
        return {"id": model_name, "object": "model", "created": service.created, "owned_by": "candorlm",
                "context_length": service.context, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads}

    @api.get("/v1/models", response_model=S.ModelList, responses=responses(400, 401, 429, 500))
    async def models() -> Any:
        return {"object": "list", "data": [model_card()]}

    @api.get("/v1/models/{model_id}", response_model=S.ModelCard, responses=responses(400, 401, 404, 429, 500))
    async def model(model_id: str) -> Any:
        service.check_model(model_id)
        return model_card()

    @api.get("/v1/admin/keys", response_model=S.AdminKeys, responses=responses(400, 401, 403, 429, 500))
    async def admin_keys() -> Any:
        records = keys.records() if keys is not None else []
        data = [{"name": r.name, "scopes": list(r.scopes), "created": r.created,
                 "requests_per_minute": r.requests_per_minute, "tokens_per_hour": r.tokens_per_hour,
                 "usage": vars(service.usage.get(r.name, Usage()))} for r in records]
        return {"object": "list", "data": data}

    @api.get("/v1/admin/audit", response_model=S.AuditTail, responses=responses(400, 401, 403, 429, 500))
    async def admin_audit(limit: int = Query(100, ge=1, le=10_000, description="Newest records to return.")) -> Any:
        records = await run_in_threadpool(audit.read, limit) if audit is not None else []
        return {"object": "list", "data": records}

    @api.get("/health", response_model=S.Health, responses=responses(400, 500))
    async def health() -> Any:
        if audit is not None and audit.error is not None and await run_in_threadpool(audit.failing):
            raise unavailable()  # a monitor must not see "ok" while every API request is refused
        return {"status": "ok", "model": model_name, "auth": keys is not None, "engine": engine.load}

    app.include_router(api)

    index = (UI_DIR / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index)

    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")
    cfg = lm.model.cfg
    app.openapi = lambda: openapi(app, model_name=model_name, limits=limits,  # type: ignore[method-assign]
                                  context=service.context, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                  keyed=keys is not None)
    return app
