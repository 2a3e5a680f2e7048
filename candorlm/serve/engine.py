"""Continuous batching: many requests share one model, one decoding step at a time.

A request (a `Job`) waits in a queue until a slot of the preallocated cache is free, joins the
running batch with one prefill forward pass, then advances one token per step together with
every other job in the batch, and leaves as soon as it finishes or is cancelled (its client
went away); the next waiting job takes the slot at once. So a long answer never holds a short
one back, and 16 clients cost little more per step than one.

The cache holds every slot's keys and values for positions 0..max_len-1; each slot has its own
length. Active jobs always sit in rows 0..n-1 (a job that leaves is replaced by the last row),
so a decoding step works on a plain view of the first n rows: each row writes its new key and
value at its own position, and a (n, S) mask hides the columns past each row's length.

All model work happens on the engine's own thread. Results reach callers through each job's
`on_event` callback (the HTTP layer hands them to its event loop), or `Job.result` for a
blocking caller.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from candorlm.errors import CandorError
from candorlm.generate import SamplingConfig, choose_next
from candorlm.lm import TextRow as _TextRow  # the trunk's text assembly: incomplete UTF-8, stop strings
from candorlm.model import DecoderLM
from candorlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class SlotCache:
    """Keys and values of `slots` sequences, each with its own length, preallocated once.

    It speaks the model's cache protocol (`length`, `update`, `advance`), set up before each
    forward pass by `prefill` (new rows, from column 0) or `decode` (one token per active row).
    """

    def __init__(self, n_layers: int, slots: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (n_layers, slots, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slots, self.max_len, self.device = slots, max_len, device
        self.lengths = [0] * slots  # tokens cached per slot
        self.length = 0  # what the model reads: columns cached before this pass (shared span)
        self._rows = range(0)
        self._new_lengths: list[int] = []
        self._positions = torch.zeros(0, dtype=torch.long, device=device)
        self._span = 0
        self.fused: dict = {}  # the concatenated q/k/v weights, as a KVCache keeps them (model/fused.py)

    def prefill(self, first: int, prompt_lengths: Sequence[int]) -> None:
        """The next pass writes right-padded prompts into rows first.. from column 0.

        Right padding needs no mask: under causal attention a real token never sees the
        padding after it, and the padding's own columns are masked by later decode steps.
        """
        self._rows = range(first, first + len(prompt_lengths))
        self._new_lengths = list(prompt_lengths)
        self._span = 0
        self.length = 0
        self.fused = {}  # new requests: their first pass checks the weights again

    def decode(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next pass feeds one token to each of rows 0..n-1; returns (position_ids (n, 1),
        attention_mask (n, S)) for it."""
        self._rows = range(n)
        lengths = self.lengths[:n]
        self._span = max(lengths) + 1
        self.length = self._span - 1  # the model sees S = length + 1 columns
        self._positions = torch.tensor(lengths, dtype=torch.long, device=self.device)
        columns = torch.arange(self._span, device=self.device)
        mask = columns[None, :] <= self._positions[:, None]  # (n, S): own tokens and the new one
        return self._positions[:, None], mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows
        if self._span == 0:  # prefill: k, v are (B, Hkv, T, D) for rows first..
            T = k.shape[2]
            self.k[layer, rows.start:rows.stop, :, :T] = k
            self.v[layer, rows.start:rows.stop, :, :T] = v
            return self.k[layer, rows.start:rows.stop, :, :T], self.v[layer, rows.start:rows.stop, :, :T]
        index = torch.arange(rows.stop, device=self.device)
        self.k[layer, index, :, self._positions] = k[:, :, 0]  # (n, Hkv, D) at each row's own column
        self.v[layer, index, :, self._positions] = v[:, :, 0]
        return self.k[layer, :rows.stop, :, :self._span], self.v[layer, :rows.stop, :, :self._span]

    def advance(self, n: int) -> None:
        if self._span == 0:
            for row, length in zip(self._rows, self._new_lengths):
                self.lengths[row] = length
        else:
            for row in self._rows:
                self.lengths[row] += n

    def move(self, src: int, dst: int) -> None:
        """Copy slot src's cached positions into slot dst (to keep active rows contiguous)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n


@dataclass
class Event:
    """What a job produced since the last event: new text, and at the end why it stopped."""

    text: str
    finish_reason: str | None = None  # "stop" (end token or stop string), "length", "cancelled", "error"
    completion_tokens: int = 0
    error: str | None = None


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One sequence to generate. `on_event` is called on the engine thread (keep it quick)."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    stop_ids: frozenset[int]
    stop_texts: tuple[str, ...] = ()
    on_event: Callable[[Event], None] | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    finished: bool = False
    # engine-side state
    tokens: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    row: _TextRow | None = None
    _events: "queue.SimpleQueue[Event] | None" = None

    def cancel(self) -> None:
        """Stop generating (thread-safe); the engine frees the slot before its next step."""
        self.cancelled = True

    def result(self, timeout: float | None = None) -> tuple[str, Event]:
        """Block until the job ends: (all its text, the last event). For callers without asyncio."""
        if self._events is None:
            raise RuntimeError("only a job submitted without on_event can be waited on")
        text = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self._events.get(timeout=left)
            text.append(event.text)
            if event.finish_reason is not None:
                return "".join(text), event


def _check_cache_fits(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, before allocating, a KV cache (keys and values for every slot) larger than the
    device's memory: a traceback or the kernel's OOM killer says nothing about --max-batch."""
    need = 2 * dtype.itemsize * math.prod(shape)
    if device.type == "cuda":
        have, where = torch.cuda.mem_get_info(device)[0], f"free on {device}"
    else:
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "of memory on this machine"
    if need > have:
        raise CandorError(f"the KV cache for max_batch {shape[1]} at a context of {shape[3]} tokens needs "
                          f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB {where}; lower --max-batch")


class EngineBusy(CandorError):
    """Too many requests are waiting; the caller should retry later."""


class Engine:
    """Runs decoding for all submitted jobs on one background thread (see the module docstring)."""

    def __init__(self, model: DecoderLM, tokenizer: Tokenizer, max_batch: int = 16, max_waiting: int = 256,
                 max_len: int | None = None):
        if max_batch < 1:
            raise CandorError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        param = next(model.parameters())
        self.device = param.device
        cfg = model.cfg
        shape = (cfg.n_layers, max_batch, cfg.kv_heads, self.max_len, cfg.head_dim)
        _check_cache_fits(shape, param.dtype, self.device)
        self.cache = SlotCache(*shape, param.dtype, self.device)
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []  # job i occupies cache row i
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decoding steps run (for tests and stats)
        self.max_active_seen = 0

    # ---------------------------------------------------------------- public
    def start(self) -> "Engine":
        """Start (or restart, after `stop`) the decoding thread."""
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="candorlm-engine", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> Job:
        """Queue a job. Raises CandorError when it cannot fit, EngineBusy when the queue is full."""
        if not job.prompt_ids:
            raise CandorError("the prompt has no tokens")
        if len(job.prompt_ids) + job.sampling.max_new_tokens > self.max_len:
            raise CandorError(f"prompt ({len(job.prompt_ids)} tokens) plus max_tokens "
                              f"({job.sampling.max_new_tokens}) exceeds the context of {self.max_len} tokens")
        job.sampling.check()
        if job.on_event is None:
            job._events = queue.SimpleQueue()
            job.on_event = job._events.put
        with self._wake:
            if self._stopping or self._thread is None:
                raise EngineBusy("the engine is not running (the server is starting or shutting down)")
            if len(self._waiting) >= self.max_waiting:
                raise EngineBusy(f"{len(self._waiting)} requests are already waiting; retry shortly")
            self._waiting.append(job)
            self._wake.notify()
        return job

    @property
    def load(self) -> dict[str, int]:
        return {"active": len(self._active), "waiting": len(self._waiting), "slots": self.max_batch}

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._active:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self._admit()
                self._drop_cancelled()
                if self._active:
                    self._step()
            except Exception:  # a bug must not hang every client: fail the jobs in flight
                log.exception("engine step failed")
                for job in self._active:
                    # What failed is in the log above; callers learn only that it did.
                    self._finish(job, "error", error="the model failed while generating (the server's log says why)")
                self._active.clear()
        for job in [*self._active, *self._waiting]:
            self._finish(job, "cancelled")
        self._active.clear()
        self._waiting.clear()

    def _drop_cancelled(self) -> None:
        for i in reversed(range(len(self._active))):
            if self._active[i].cancelled:
                self._finish(self._active[i], "cancelled")
                self._release(i)

    def _admit(self) -> None:
        """Move waiting jobs into free slots and run their prompts in one prefill pass."""
        new: list[Job] = []
        with self._wake:
            while self._waiting and len(self._active) + len(new) < self.max_batch:
                job = self._waiting.popleft()
                if job.cancelled:
                    self._finish(job, "cancelled")
                else:
                    new.append(job)
        if not new:
            return
        first = len(self._active)
        lengths = [len(j.prompt_ids) for j in new]
        ids = torch.full((len(new), max(lengths)), self.tokenizer.pad_id, dtype=torch.long)
        for i, job in enumerate(new):
            ids[i, :lengths[i]] = torch.tensor(job.prompt_ids, dtype=torch.long)
            job.row = _TextRow(self.tokenizer, job.stop_texts)
            if job.sampling.seed is not None:
                job.generator = torch.Generator(device=self.device).manual_seed(job.sampling.seed)
        self._active.extend(new)  # before the pass, so that a failure reaches these jobs too
        self.max_active_seen = max(self.max_active_seen, len(self._active))
        self.cache.prefill(first, lengths)
        logits = self.model(ids.to(self.device), cache=self.cache)  # (B, T, V)
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        self._sample(logits[torch.arange(len(new), device=self.device), last], range(first, first + len(new)))

    def _step(self) -> None:
        n = len(self._active)
        positions, mask = self.cache.decode(n)
        tokens = torch.tensor([[job.tokens[-1]] for job in self._active], dtype=torch.long, device=self.device)
        logits = self.model(tokens, attention_mask=mask, position_ids=positions, cache=self.cache)[:, -1]
        self.steps += 1
        self._sample(logits, range(n))

    def _sample(self, logits: torch.Tensor, rows: range) -> None:
        """Choose each row's next token with its own settings, deliver text, retire finished rows."""
        logits = logits.float()
        groups: dict[frozenset[int], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(self._active[r].stop_ids, []).append(i)
        for stop_ids, members in groups.items():
            # Special tokens are never text; only a job's own stop tokens may be chosen.
            banned = torch.tensor(sorted(self.tokenizer.special_ids - stop_ids), dtype=torch.long,
                                  device=self.device)
            picked = torch.tensor(members, dtype=torch.long, device=self.device)
            logits[picked[:, None], banned[None, :]] = float("-inf")
        for i, r in enumerate(rows):
            bias = self._active[r].logit_bias
            if bias:
                ids = torch.tensor(list(bias), dtype=torch.long, device=self.device)
                logits[i, ids] += torch.tensor(list(bias.values()), dtype=logits.dtype, device=self.device)
        greedy = [i for i, r in enumerate(rows) if self._plain_greedy(self._active[r])]
        chosen: dict[int, int] = {}
        if greedy:
            chosen.update(zip(greedy, logits[greedy].argmax(-1).tolist()))
        for i, r in enumerate(rows):
            if i not in chosen:
                job = self._active[r]
                seen = torch.tensor([job.prompt_ids + job.tokens], dtype=torch.long, device=self.device)
                chosen[i] = int(choose_next(logits[i:i + 1], seen, job.sampling, job.generator)[0])
        done: list[int] = []
        for i, r in enumerate(rows):
            job = self._active[r]
            token = chosen[i]
            job.tokens.append(token)
            row = job.row
            assert row is not None
            hit_stop = token in job.stop_ids
            text = row.push(token, hit_stop)
            if row.done:  # a stop token, or a stop string (the row cut the text at it)
                self._finish(job, "stop", text)
                done.append(r)
            elif len(job.tokens) >= job.sampling.max_new_tokens:
                row.done = True
                self._finish(job, "length", text + row.flush())
                done.append(r)
            elif text and job.on_event is not None:
                job.on_event(Event(text))
        for r in sorted(done, reverse=True):
            self._release(r)

    @staticmethod
    def _plain_greedy(job: Job) -> bool:
        return job.sampling.is_greedy and job.sampling.repetition_penalty == 1.0

    def _release(self, row: int) -> None:
        last = len(self._active) - 1
        if row != last:
            self.cache.move(last, row)
            self._active[row] = self._active[last]
        self._active.pop()

    def _finish(self, job: Job, reason: str, text: str = "", error: str | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        if job.on_event is not None:
            job.on_event(Event(text, reason, len(job.tokens), error))
