"""Pretraining objectives, one per architecture, over the same token windows.

The trainer's loop is the same for every architecture: it draws windows (x, y) of token ids
from the shards, asks the objective to turn them into the model's inputs and its targets, and
minimises cross-entropy on the targets (-100 marks positions without a target).

- decoder (causal LM): inputs x, targets y (the next token at every position).
- encoder (masked LM, BERT): 15% of the (non-special) tokens of x are chosen; of those, 80%
  become <|mask|>, 10% a random token, 10% stay; the targets are the original tokens at the
  chosen positions only. The masking is drawn afresh every step (dynamic masking, as RoBERTa),
  from a generator seeded by (seed, step), so a resumed run masks exactly as an uninterrupted one.
- seq2seq (denoising, BART-style text infilling): spans of x (lengths 1-5, about 30% of the
  tokens) are each replaced by one <|mask|> in the source; the decoder, teacher-forced with
  <|bos|> + x[:-1], must write all of x.

Evaluation uses the same objective on the validation windows, with masks drawn from a fixed
seed, so every evaluation of a run scores the same masked positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from candorlm.errors import CandorError
from candorlm.tokenizer import Tokenizer

IGNORE = -100
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]
_EVAL_SEED = 20240601


def seeded_generator(*seed: int) -> torch.Generator:
    """A generator seeded by a stable mix of `seed`'s parts: the same masks for the same parts."""
    value = 0
    for part in seed:  # a simple, stable mix of the parts into one 63-bit seed
        value = (value * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def mask_tokens(ids: torch.Tensor, tokenizer: Tokenizer, generator: torch.Generator,
                rate: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch (B, T): returns (inputs, targets), targets IGNORE where not chosen.

    Special tokens (document boundaries, padding) are never chosen. At least one token per row
    is chosen when the row has any ordinary token, so every row contributes to the loss.
    """
    if tokenizer.mask_id is None:
        raise ValueError("masked-LM pretraining needs a tokenizer with <|mask|>")
    special = torch.tensor(sorted(tokenizer.special_ids), dtype=ids.dtype)
    ordinary = ~torch.isin(ids, special)
    scores = torch.rand(ids.shape, generator=generator)
    chosen = (scores < rate) & ordinary
    # A row with nothing chosen (short rows) gets its lowest-scoring ordinary token.
    empty = ~chosen.any(1) & ordinary.any(1)
    if empty.any():
        first = scores.masked_fill(~ordinary, 2.0).argmin(1)
        chosen[empty, first[empty]] = True
    targets = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    action = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    first_ordinary = len(tokenizer.special_ids)  # candorlm's specials are ids 0..n-1
    random_ids = torch.randint(first_ordinary, tokenizer.vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    inputs = torch.where(to_mask, torch.full_like(ids, tokenizer.mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, targets


def corrupt_spans(ids: torch.Tensor, tokenizer: Tokenizer, generator: torch.Generator, rate: float = 0.3,
                  max_span: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """BART-style text infilling of a batch (B, T): spans of 1..max_span tokens, covering about
    `rate` of each row, collapse to one <|mask|> each. Returns right-padded sources (B, T) and
    their attention mask (1 = real token)."""
    B, T = ids.shape
    starts = torch.rand((B, T), generator=generator) < rate / ((1 + max_span) / 2)
    lengths = torch.randint(1, max_span + 1, (B, T), generator=generator)
    rows = []
    for b in range(B):
        out: list[int] = []
        row, start, length = ids[b].tolist(), starts[b].tolist(), lengths[b].tolist()
        t = 0
        while t < T:
            if start[t]:
                out.append(tokenizer.mask_id)
                t += length[t]
            else:
                out.append(row[t])
                t += 1
        rows.append(out)
    source = torch.full((B, T), tokenizer.pad_id, dtype=ids.dtype)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, out in enumerate(rows):
        source[b, :len(out)] = torch.tensor(out, dtype=ids.dtype)
        mask[b, :len(out)] = 1
    return source, mask


class Objective:
    """Turns a window batch (x, y) into the model's keyword inputs and its targets."""

    def __init__(self, arch: str, tokenizer: Tokenizer, seed: int):
        if arch != "decoder" and (tokenizer.mask_id is None or tokenizer.bos_id is None):
            raise ValueError(f"{arch} pretraining needs <|mask|> and <|bos|> in the tokenizer")
        self.arch, self.tokenizer, self.seed = arch, tokenizer, seed

    def batch(self, x: torch.Tensor, y: torch.Tensor, draw: int) -> Batch:
        """Inputs and targets for training; `draw` numbers the micro-batch (it seeds the masking)."""
        return self._make(x, y, seeded_generator(self.seed, draw))

    def eval_batch(self, x: torch.Tensor, y: torch.Tensor, index: int) -> Batch:
        """The same for evaluation, with masks that depend only on the batch's index."""
        return self._make(x, y, seeded_generator(_EVAL_SEED, index))

    def _make(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Batch:
        if self.arch == "decoder":
            return {"input_ids": x}, y
        if self.arch == "encoder":
            inputs, targets = mask_tokens(x, self.tokenizer, generator)
            return {"input_ids": inputs}, targets
        source, mask = corrupt_spans(x, self.tokenizer, generator)
        bos = torch.full_like(x[:, :1], self.tokenizer.bos_id)
        return {"input_ids": source, "attention_mask": mask, "decoder_input_ids": torch.cat([bos, x[:, :-1]], 1)}, x

    @property
    def eval_fn(self) -> Callable[[torch.Tensor, torch.Tensor, int], Batch] | None:
        """What evaluation passes to `evaluate_bpb` (None: plain next-token windows)."""
        return None if self.arch == "decoder" else self.eval_batch


def make_objective(arch: str, tokenizer: Tokenizer, seed: int, tokenizer_file: Path) -> Objective:
    """The pretraining objective of `arch`; a tokenizer without the tokens it needs is a CandorError."""
    try:
        return Objective(arch, tokenizer, seed)
    except ValueError as exc:
        raise CandorError(f"{tokenizer_file}: {exc}. Prepare the data with a tokenizer trained by candorlm.") from None
