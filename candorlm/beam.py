"""Greedy and beam search with a length penalty, over a KV-cached model.

Used for the encoder-decoder (translation, generative QA) and for the decoder (QA, chat
evaluation). A *session* holds the model and its cache for N rows and gives the next-token
logits: `start()` for the first new token, `advance(tokens)` after feeding one token per row,
and `reorder(index)` when beam search keeps some beams and drops others (the cache rows move
with them).

Beam search keeps the K best partial hypotheses per input by total log-probability. A
hypothesis ends when it emits <|eos|> among the K best candidates of a step; an input is done
once K hypotheses have ended (fairseq's stopping rule), or at `max_new_tokens`, when the live
beams count as ended too. The answer is the ended hypothesis with the best
    score = sum of log-probabilities / length ** length_penalty
(length counts the tokens generated, <|eos|> included; length_penalty 0 compares raw sums,
which favours short outputs; 1 compares per-token averages). With K = 1 this is greedy search.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import nn

from candorlm.device import batch_width_multiple
from candorlm.errors import CandorError
from candorlm.generate import left_pad, repeated_ngram_ends


class Session(Protocol):
    rows: int

    def start(self) -> torch.Tensor: ...  # (rows, vocab) logits of the first new token

    def advance(self, tokens: torch.Tensor) -> torch.Tensor: ...  # feed (rows,) tokens -> next logits

    def reorder(self, index: torch.Tensor) -> None: ...


def right_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu", multiple: int = 1,
              limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids padded on the right with `pad`, and the (B, T) mask of real tokens. T is the
    longest row rounded up to `multiple`, but not past `limit` (a model's max_seq_len)."""
    width = max(1, max(len(r) for r in rows))
    rounded = -(-width // multiple) * multiple
    width = max(width, min(rounded, limit)) if limit is not None else rounded
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def pad_training_batch(rows: Sequence[Sequence[int]], pad: int, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """right_pad for a training batch: under CPU bf16 its width rounds up to
    device.batch_width_multiple (few shapes, bounded memory), never past `limit` (max_seq_len).
    With `limit` None (an evaluation batch), as wide as its longest row."""
    if limit is None:
        return right_pad(rows, pad)
    return right_pad(rows, pad, multiple=batch_width_multiple(), limit=limit)


class Seq2SeqSession:
    """An encoder-decoder decoding `expand` beams for each source: the encoder runs once per
    source, the cross-attention keys/values once per decoding, the decoder one token per step."""

    def __init__(self, model: nn.Module, sources: Sequence[Sequence[int]], *, bos_id: int, pad_id: int,
                 max_new_tokens: int, expand: int = 1):
        if not sources or any(len(s) == 0 for s in sources):
            raise CandorError("every source needs at least one token")
        if max_new_tokens + 1 > model.cfg.max_seq_len:
            raise CandorError(f"max_new_tokens ({max_new_tokens}) exceeds the model's maximum target length "
                              f"({model.cfg.max_seq_len - 1})")
        device = next(model.parameters()).device
        self.model = model
        ids, mask = right_pad(sources, pad_id, device)
        self.memory = model.encode(ids, mask).repeat_interleave(expand, 0)
        self.mask = mask.repeat_interleave(expand, 0)
        self.rows = len(sources) * expand
        self.cache = model.make_cache(self.rows, max_new_tokens + 1)
        self.bos = torch.full((self.rows, 1), bos_id, dtype=torch.long, device=device)

    def start(self) -> torch.Tensor:
        return self.model.decode(self.bos, self.memory, self.mask, self.cache)[:, -1]

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tokens[:, None], self.memory, self.mask, self.cache)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        self.memory, self.mask = self.memory[index], self.mask[index]


class DecoderSession:
    """A decoder-only model continuing `expand` beams of each prompt (left-padded, as generate.py)."""

    def __init__(self, model: nn.Module, prompts: Sequence[Sequence[int]], *, pad_id: int, max_new_tokens: int,
                 expand: int = 1):
        device = next(model.parameters()).device
        ids, mask = left_pad(prompts, pad_id, device)
        if ids.shape[1] + max_new_tokens > model.cfg.max_seq_len:
            raise CandorError(f"prompt ({ids.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
                              f"model's maximum sequence length ({model.cfg.max_seq_len})")
        self.model = model
        self.ids = ids.repeat_interleave(expand, 0)
        self.mask = mask.repeat_interleave(expand, 0) if mask is not None else None
        self.rows = len(prompts) * expand
        self.cache = model.make_cache(self.rows, ids.shape[1] + max_new_tokens)

    def start(self) -> torch.Tensor:
        return self.model(self.ids, attention_mask=self.mask, cache=self.cache)[:, -1]

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self.model(tokens[:, None], attention_mask=self.mask, cache=self.cache)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        if self.mask is not None:
            self.mask = self.mask[index]


@torch.no_grad()
def greedy_search(session: Session, *, eos_id: int, max_new_tokens: int,
                  suppress_ids: Sequence[int] = (), no_repeat_ngram: int = 0) -> list[list[int]]:
    """The most likely next token at every step, for every row; outputs stop before <|eos|>.
    With `no_repeat_ngram` n > 0, no n-gram of tokens occurs twice in one row's output (the
    prompt is not counted, so an answer may still copy its context)."""
    out: list[list[int]] = [[] for _ in range(session.rows)]
    done = [False] * session.rows
    logits = session.start()
    for step in range(max_new_tokens):
        logits = logits.float()
        if suppress_ids:
            logits[:, list(suppress_ids)] = float("-inf")
        if no_repeat_ngram > 0:
            for i, row in enumerate(out):
                banned = repeated_ngram_ends(row, no_repeat_ngram)
                if banned and not done[i]:
                    logits[i, banned] = float("-inf")
        tokens = logits.argmax(-1)
        for i, t in enumerate(tokens.tolist()):
            if not done[i]:
                done[i] = t == eos_id
                if not done[i]:
                    out[i].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        tokens = torch.where(torch.tensor(done, device=tokens.device), torch.full_like(tokens, eos_id), tokens)
        logits = session.advance(tokens)
    return out


@torch.no_grad()
def beam_search(session: Session, *, beam_size: int, eos_id: int, max_new_tokens: int,
                length_penalty: float = 1.0, suppress_ids: Sequence[int] = ()) -> list[list[int]]:
    """The best hypothesis of each input (outputs stop before <|eos|>). `session` must hold
    `beam_size` rows per input (made with expand=beam_size), rows of one input adjacent."""
    K = beam_size
    if K < 1:
        raise CandorError(f"beam size must be at least 1, got {K}")
    B = session.rows // K
    logits = session.start()
    device = logits.device
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: keep one, or the first step picks K copies
    history = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    ended: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        logp = logits.float().log_softmax(-1)
        if suppress_ids:
            logp[:, list(suppress_ids)] = float("-inf")
        V = logp.shape[-1]
        candidates = (scores.reshape(-1, 1) + logp).view(B, K * V)
        top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)  # (B, 2K): enough to refill K live beams
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        next_scores = torch.full((B, K), float("-inf"), device=device)
        next_rows = torch.arange(B * K, device=device).view(B, K).clone()
        next_tokens = torch.full((B, K), eos_id, dtype=torch.long, device=device)
        hist = history.tolist()
        for b in range(B):
            if done[b]:
                continue
            live = 0
            for rank, (score, flat) in enumerate(zip(top_scores[b], top_index[b])):
                beam, token = divmod(flat, V)
                row = b * K + beam
                if score == float("-inf"):
                    break
                if token == eos_id:
                    if rank < K:  # an ending counts only among the K best candidates of the step
                        ended[b].append((score / (step + 1) ** length_penalty, hist[row]))
                    continue
                next_scores[b, live], next_rows[b, live], next_tokens[b, live] = score, row, token
                live += 1
                if live == K:
                    break
            if len(ended[b]) >= K or live == 0:
                done[b] = True
        if all(done) or step == max_new_tokens - 1:
            if not all(done):
                index = next_rows.view(-1)
                final = torch.cat([history[index], next_tokens.view(-1, 1)], dim=1).tolist()
                for b in range(B):
                    if done[b]:
                        continue
                    for k in range(K):
                        s = float(next_scores[b, k])
                        if s > float("-inf"):
                            ended[b].append((s / (step + 1) ** length_penalty, final[b * K + k]))
            break
        index = next_rows.view(-1)
        history = torch.cat([history[index], next_tokens.view(-1, 1)], dim=1)
        scores = next_scores
        session.reorder(index)
        logits = session.advance(next_tokens.view(-1))
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in ended]
