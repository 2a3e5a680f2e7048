"""Decoding: greedy, temperature, top-k, top-p, repetition penalty; KV cache; batched; streaming.

`stream_ids` is the loop: it yields the next token of every sequence at each step, so callers
can print as it goes. Prompts of different lengths are left-padded and masked, so a batch
decodes together. With `use_cache=False` every step recomputes the whole sequence (slow; kept
to prove the cache changes nothing).

The prompt goes through the model's forward pass; each later token of a decoder-only model goes
through `model/decode.py`'s DecodeStep (static shapes over a preallocated cache, ~5x fewer
operators), unless a hook is attached, when the forward pass runs every step so the hooks see it.
`compile`: the step compiled with torch.compile, which costs seconds to minutes once per process
and shape and then makes each token several times cheaper. Greedy decoding with nothing else
reading the logits (no penalty, no n-gram ban) then makes decode.CHUNK tokens per compiled call
(the argmax inside the graph; tokens past the budget or a row's stop token are dropped). By
default (None) it is used where it pays: when already compiled for this shape, or once this
process has decoded AUTO_COMPILE_AFTER steps with the model; where torch.compile cannot compile
(model/compiled.py's `compile_errors`: no C++ compiler, an unsupported construct) it then only
logs a warning and decoding goes on eagerly. True compiles now and fails loudly if it cannot;
False never compiles. Any other error of a compiled call (a shape error, an out-of-memory) is
raised as it is, whatever `compile` says. A process compiles at most decode.recompile_limit()
shapes of the step (and as many of the greedy chunk); past that a new shape decodes eagerly, and
a warning says so once (None), or it fails loudly (True).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from candorlm.errors import CandorError
from candorlm.model import decode
from candorlm.model.compiled import compile_errors, failure_reason, recompile_limit_hit
from candorlm.model.decode import DecodeStep, StaticKVCache, decode_step, greedy_key, shape_key, supports

log = logging.getLogger("candorlm")

# Decode steps after which compiling pays by default: on the 2-core CPU, under load, compiling the
# d256 4-layer greedy chunk took 54 s of CPU time and saved about 1.1 ms of it per token at batch 1
# (2.2 -> 1.05 ms), so it pays after some 50,000 tokens (docs/benchmarks/speed.md).
AUTO_COMPILE_AFTER = 50_000


@dataclass
class SamplingConfig:
    """How to pick each next token.

    Attributes:
        max_new_tokens: Most tokens to generate.
        greedy: Always take the most likely token.
        temperature: Sampling temperature (0 = greedy).
        top_k: Sample among the k most likely tokens.
        top_p: Sample among the most likely tokens holding probability p.
        repetition_penalty: Above 1 discourages repeating tokens.
        no_repeat_ngram: Never repeat a token n-gram of this size in the new text (0: off; the
            prompt is not counted).
        seed: Random seed for sampling.
    """

    max_new_tokens: int = 64
    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram: int = 0
    seed: int | None = None

    def check(self) -> None:
        if self.max_new_tokens < 0:
            raise CandorError(f"max_new_tokens must be 0 or more, got {self.max_new_tokens}")
        if not self.greedy and self.temperature < 0:
            raise CandorError(f"temperature must be 0 or more, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise CandorError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise CandorError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise CandorError(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        if self.no_repeat_ngram < 0:
            raise CandorError(f"no_repeat_ngram must be 0 (off) or more, got {self.no_repeat_ngram}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


def repeated_ngram_ends(tokens: Sequence[int], n: int) -> list[int]:
    """The tokens that would complete an n-gram already in `tokens` (HF's no_repeat_ngram_size)."""
    if n <= 0 or len(tokens) < n - 1:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return sorted({tokens[j + n - 1] for j in range(len(tokens) - n + 1) if tuple(tokens[j:j + n - 1]) == prefix})


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019): tokens already seen get their logit divided by
    `penalty` when positive, multiplied when negative."""
    if penalty == 1.0:
        return logits
    scores = logits.gather(1, seen)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(1, seen, scores)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[:, 0] = False  # even when rounding (or a top_p below float32's range) says otherwise
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_next(logits: torch.Tensor, seen: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row from its logits (B, V)."""
    logits = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    if cfg.is_greedy:
        return logits.argmax(-1)
    # Softmax ignores a shift: with the max subtracted first, a tiny temperature (or penalty) sends
    # the other logits towards -inf instead of overflowing to +inf, whose softmax is NaN.
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)
    logits = ((logits - logits.max(-1, keepdim=True).values).double() / cfg.temperature).float()
    logits = filter_top_k_top_p(logits, cfg.top_k, cfg.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) ids, left-padded, and the (B, T) mask of real tokens (None when nothing is padded)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise CandorError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    padded = bool((mask == 0).any())
    return ids.to(device), (mask.to(device) if padded else None)


def cache_length(needed: int, max_len: int) -> int:
    """The decode cache's length: a power of two from 64 (capped at the model's context), so
    that generations of similar lengths share one compiled step."""
    return min(max_len, max(64, 1 << (needed - 1).bit_length()))


class _Steps:
    """The decode steps after the prompt through a DecodeStep: its slot, positions and key mask.

    Compiled and greedy (`banned` not None: no sampling, penalty or n-gram ban reads the logits),
    the steps come decode.CHUNK tokens at a time from `greedy` while the cache has room for a
    whole chunk (tokens past the budget or a stop token are the caller's to drop); the last few
    where it has not come one by one (through the one-token graph where compiled, else eager)."""

    def __init__(self, model: nn.Module, step: DecodeStep, cache: StaticKVCache, mask: torch.Tensor | None,
                 compile: bool | None, remaining: int, banned: torch.Tensor | None = None, greedy: bool = False):
        B, T, L = cache.batch_size, cache.length, cache.max_len
        device = cache.device
        self.step, self.cache, self.banned = step, cache, banned
        step.prepare(model, cache)
        self.slot = torch.tensor([T], dtype=torch.long, device=device)
        self.key_ok = None
        if mask is None:
            self.positions = torch.full((B,), T, dtype=torch.long, device=device)
        else:  # left padding: each row's position is its count of real tokens so far
            self.positions = mask.sum(-1)
            self.key_ok = torch.ones((B, L), dtype=torch.bool, device=device)
            self.key_ok[:, :T] = mask.bool()
        self.keys = (shape_key(cache, self.key_ok), greedy_key(cache, self.key_ok, banned))
        ready = self.keys[0] in step.compiled_shapes
        chunk_ready = greedy and self.keys[1] in step.greedy_shapes
        self.explicit = bool(compile)
        if compile is None:  # compiles nothing where a graph for this shape is there
            pays = step.compile_error is None and step.steps + remaining >= AUTO_COMPILE_AFTER \
                and not step.over_limit & set(self.keys)
            compile = ready or chunk_ready or pays
            greedy = greedy and (chunk_ready or not ready)
        self.chunked = bool(compile) and greedy  # `greedy` makes the tokens where it can
        self.compiled = bool(compile) and ready
        self.to_compile = bool(compile) and not ready and not self.chunked  # the chunk's last few: eager

    def greedy(self, token: torch.Tensor) -> torch.Tensor | None:
        """The next decode.CHUNK greedy tokens (CHUNK, B) after `token`, or None when they do not
        come in a chunk (not compiled, no room left in the cache, or compiling failed)."""
        if not self.chunked or self.cache.length + decode.CHUNK > self.cache.max_len:
            return None
        try:
            tokens = self.step.greedy(token, self.slot, self.positions, self.key_ok, self.cache, self.banned)
        except compile_errors() as e:
            self.chunked = False
            self._compile_failed(e)
            return None
        self.slot += decode.CHUNK
        self.positions += decode.CHUNK
        self.cache.advance(decode.CHUNK)
        return tokens

    def _compile_failed(self, e: Exception) -> None:
        reason = failure_reason(e)
        limit = recompile_limit_hit(e)
        if limit:  # this shape decodes eagerly from now on; the graphs there still serve theirs
            self.step.over_limit.update(self.keys)
            reason = (f"it has compiled as many shapes as torch allows ({decode.recompile_limit()}): raise "
                      "torch._dynamo.config.recompile_limit to allow more")
        if self.explicit:
            raise CandorError(f"could not compile the decode step: {reason}") from None
        self.to_compile = self.compiled = False
        if not limit:
            self.step.compile_error = reason
            log.warning("generation goes on without compiling: %s", reason)
        elif not self.step.limit_said:
            self.step.limit_said = True
            log.warning("the decode step has compiled as many shapes as torch allows (recompile limit %d): new "
                        "shapes decode without compiling; raise torch._dynamo.config.recompile_limit to compile "
                        "more", decode.recompile_limit())

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        args = (token, self.slot, self.positions, self.key_ok, self.cache)
        if self.to_compile or self.compiled:
            # A graph compiled for this shape compiles again where a guard fails, and that can fail too.
            first, self.to_compile = self.to_compile, False
            try:
                logits = self.step.compile(*args) if first else self.step(*args, compiled=True)
                self.compiled = True
            except compile_errors() as e:  # a missing C++ compiler, an unsupported construct, the limit
                self._compile_failed(e)
                logits = self.step(*args)
        else:
            logits = self.step(*args)
        self.slot += 1
        self.positions += 1
        self.cache.advance(1)
        return logits


@torch.inference_mode()  # like no_grad, and also skips autograd's version counting: less per-op overhead
def stream_ids(model: nn.Module, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *,
               stop_ids: Iterable[int] = (), suppress_ids: Iterable[int] = (), pad_id: int = 0,
               use_cache: bool = True, compile: bool | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next tokens (B,), finished (B,)) per step until every row stops or the budget ends.

    A row finishes when it emits a token in `stop_ids` (that token is yielded once); after
    that its entries are `pad_id`. Tokens in `suppress_ids` are never chosen. `compile`: see
    the module's docstring (None: where it pays; True: now, or a CandorError).
    """
    cfg.check()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    B, T = ids.shape
    max_len = model.cfg.max_seq_len
    if T + cfg.max_new_tokens > max_len:
        raise CandorError(
            f"prompt ({T} tokens) plus max_new_tokens ({cfg.max_new_tokens}) exceeds the model's maximum "
            f"sequence length ({max_len}). Shorten the prompt or lower --max-new-tokens."
        )
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    suppress = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    step = decode_step(model) if use_cache and supports(model) else None
    if compile and step is None:
        raise CandorError("compile=True needs a decoder-only model, the KV cache on and no hook attached")
    if step is not None:
        cache = step.make_cache(model, B, cache_length(T + cfg.max_new_tokens, max_len))
    else:
        cache = model.make_cache(B, T + cfg.max_new_tokens) if use_cache else None
    steps: _Steps | None = None
    # Greedy with nothing else reading the logits: the compiled step makes several tokens a call.
    chunkable = cfg.is_greedy and cfg.repetition_penalty == 1.0 and cfg.no_repeat_ngram == 0
    banned = None
    if chunkable and len(suppress):
        banned = torch.zeros(model.cfg.vocab_size, dtype=model.tok_emb.weight.dtype, device=device)
        banned[suppress] = float("-inf")
    # Every token so far, in one buffer filled as decoding goes (no growing copy per step).
    seen_buf = torch.empty((B, T + cfg.max_new_tokens), dtype=ids.dtype, device=device)
    seen_buf[:, :T] = ids
    seen = seen_buf[:, :T]
    step_input = ids
    # The tokens so far are read only by the uncached pass, the repetition penalty and the n-gram ban.
    track_seen = cache is None or cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram > 0
    was_training = model.training
    model.eval()
    try:
        made = 0
        while made < cfg.max_new_tokens:
            chunk = steps.greedy(step_input) if steps is not None else None
            if chunk is not None:  # past the budget, tokens are dropped (as past a stop token)
                tokens: Sequence[torch.Tensor] = chunk.unbind(0)[:cfg.max_new_tokens - made]
            else:
                if steps is not None:
                    logits = steps(step_input)
                elif cache is not None:
                    logits = model(step_input, attention_mask=mask, cache=cache)[:, -1]
                    if step is not None:  # the prompt is in the cache: the DecodeStep takes over
                        steps = _Steps(model, step, cache, mask, compile, cfg.max_new_tokens - made - 1, banned,
                                       chunkable)
                else:
                    logits = model(seen, attention_mask=mask)[:, -1]
                if len(suppress):
                    logits[:, suppress] = float("-inf")
                if cfg.no_repeat_ngram > 0 and seen.shape[1] > T:
                    new = seen[:, T:].tolist()
                    for row in range(B):
                        ends = repeated_ngram_ends(new[row], cfg.no_repeat_ngram)
                        if ends:
                            logits[row, ends] = float("-inf")
                tokens = (choose_next(logits, seen, cfg, generator),)
            for token in tokens:
                made += 1
                if len(stop):
                    token = torch.where(finished, torch.full_like(token, pad_id), token)
                    newly_stopped = torch.isin(token, stop) & ~finished
                    yield token, finished | newly_stopped
                    finished |= newly_stopped
                    if bool(finished.all()):
                        return
                else:  # no stop token: no row ever finishes (a few operators less per token)
                    yield token, finished
                if track_seen:
                    seen_buf[:, seen.shape[1]] = token
                    seen = seen_buf[:, :seen.shape[1] + 1]
            # After a chunk, a finished row's next input is its own token, not the pad it yielded:
            # rows attend only to themselves, so what a finished row computes changes no other row.
            step_input = (chunk[-1] if chunk is not None else token) if steps is not None else token[:, None]
            if mask is not None and steps is None:
                mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
    finally:
        model.train(was_training)


def generate_ids(model: nn.Module, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *,
                 stop_ids: Iterable[int] = (), suppress_ids: Iterable[int] = (), pad_id: int = 0,
                 use_cache: bool = True, compile: bool | None = None) -> list[list[int]]:
    """The new tokens of each prompt (a stop token, when hit, is the last one kept); `compile`: see
    the module's docstring."""
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for token, finished in stream_ids(model, prompts, cfg, stop_ids=stop_ids, suppress_ids=suppress_ids,
                                      pad_id=pad_id, use_cache=use_cache, compile=compile):
        for i, (t, f) in enumerate(zip(token.tolist(), finished.tolist())):
            if not done[i]:
                out[i].append(t)
                done[i] = f
    return out
