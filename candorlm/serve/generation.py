"""From a checked request to engine jobs, and from the jobs' events to OpenAI's responses:
one JSON body, or server-sent events (`data: {chunk}` lines, then `data: [DONE]`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal

from candorlm.generate import SamplingConfig
from candorlm.serve.engine import Engine, Event, Job
from candorlm.serve.errors import APIError

Kind = Literal["completion", "chat"]


@dataclass
class Plan:
    """What to generate: each prompt n times, with these settings."""

    kind: Kind
    model: str
    prompts: list[list[int]]
    n: int
    sampling: SamplingConfig
    stop_ids: frozenset[int]
    stop_texts: tuple[str, ...]
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def most_tokens(self) -> int:
        """The most tokens the request can use: its prompts, and max_tokens for every choice."""
        return self.prompt_tokens + self.choices * self.sampling.max_new_tokens


@dataclass
class Outcome:
    texts: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    completion_tokens: int = 0
    error: str | None = None

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt_tokens + self.completion_tokens}


class Generation:
    """The jobs of one request. Iterating `events()` yields (choice index, event) until all end;
    leaving early (the client went away) cancels whatever still runs."""

    def __init__(self, engine: Engine, plan: Plan, request_id: str | None = None):
        self.plan, self.engine, self.request_id = plan, engine, request_id
        self.id = f"{'chatcmpl' if plan.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.outcome = Outcome()
        self.jobs: list[Job] = []
        for prompt in plan.prompts:
            for j in range(plan.n):
                seed = plan.sampling.seed
                sampling = SamplingConfig(**{**vars(plan.sampling), "seed": None if seed is None else seed + j})
                self.jobs.append(Job(prompt, sampling, plan.stop_ids, plan.stop_texts, logit_bias=plan.logit_bias))
        self._queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.on_done: list[Callable[[Outcome], None]] = []
        self._cancelled = False

    def submit(self) -> None:
        """Queue every job (raises the engine's errors; then none of them runs)."""
        loop = asyncio.get_running_loop()
        try:
            for index, job in enumerate(self.jobs):
                job.on_event = self._deliverer(loop, index, job)
                self.engine.submit(job)
        except BaseException:  # none of them runs: withdraw those already queued, then re-raise
            self.cancel()
            raise

    def _deliverer(self, loop: asyncio.AbstractEventLoop, index: int, job: Job) -> Callable[[Event], None]:
        def deliver(event: Event) -> None:  # on the engine thread
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, (index, event))
            except RuntimeError:  # the event loop is gone: nobody will read this
                job.cancel()
        return deliver

    def cancel(self) -> None:
        self._cancelled = True
        for job in self.jobs:
            job.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        running = len(self.jobs)
        try:
            while running:
                index, event = await self._queue.get()
                self.outcome.texts[index] = self.outcome.texts.get(index, "") + event.text
                if event.finish_reason is not None:
                    running -= 1
                    if event.finish_reason == "cancelled" and not self._cancelled and not event.error:
                        event.error = "the server stopped this generation (shutting down)"
                    self.outcome.finish[index] = event.finish_reason
                    if event.error:
                        self.outcome.error = event.error
                yield index, event
        finally:
            self.cancel()
            # Tokens generated so far, finished or not (a cancelled job may still add one).
            self.outcome.completion_tokens = sum(len(job.tokens) for job in self.jobs)
            for callback in self.on_done:
                callback(self.outcome)

    async def collect(self) -> Outcome:
        async for _ in self.events():
            pass
        return self.outcome

    def failure(self) -> APIError:
        """The answer when a job failed: our own words for it (the engine logged the details)."""
        where = f" (request id {self.request_id})" if self.request_id else ""
        return APIError(500, f"generation failed: {self.outcome.error}{where}", code="generation_failed")

    # ------------------------------------------------------------------ OpenAI shapes
    def response(self) -> dict[str, Any]:
        out, plan = self.outcome, self.plan
        choices = []
        for index in range(len(self.jobs)):
            text, reason = out.texts.get(index, ""), out.finish.get(index, "stop")
            if plan.kind == "chat":
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": reason})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": reason})
        return {"id": self.id, "object": "chat.completion" if plan.kind == "chat" else "text_completion",
                "created": self.created, "model": plan.model, "choices": choices,
                "usage": out.usage(plan.prompt_tokens)}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.plan.model,
                                "object": "chat.completion.chunk" if self.plan.kind == "chat" else "text_completion",
                                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def _choice(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.plan.kind == "chat":
            delta = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's streaming format."""
        if self.plan.kind == "chat":  # the first chunk of each choice names the role
            yield self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None} for i in range(len(self.jobs))])
        async for index, event in self.events():
            if event.error:
                yield f"data: {json.dumps(self.failure().body(), ensure_ascii=False)}\n\n"
                break
            if event.finish_reason is None:
                yield self._chunk([self._choice(index, event.text, None)])
            else:
                if event.text:
                    yield self._chunk([self._choice(index, event.text, None)])
                yield self._chunk([self._choice(index, None if self.plan.kind == "chat" else "", event.finish_reason)])
        if include_usage and self.outcome.error is None:
            yield self._chunk([], self.outcome.usage(self.plan.prompt_tokens))
        yield "data: [DONE]\n\n"
