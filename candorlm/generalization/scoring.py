"""Scoring held-out text document by document: nats, tokens and bytes per document.

The generalization gap's confidence interval resamples documents, so the unit of scoring is the
document, not the window. Each document is read as `<|bos|> tokens <|eos|>` and cut into
non-overlapping windows of the model's context (the last one shorter); a window starts without
the previous window's context, as in the trunk's `evaluate_bpb`.

Bits-per-byte of a document: the nats of every target but `<|eos|>` (which stands for no text),
over ln 2, over the UTF-8 bytes of the document's text. The denominator is the text itself, not
the tokens' byte lengths, so a tokenizer that maps unseen characters to `<|unk|>` (char and word
kinds) is not flattered on foreign text: the unknown token's surprise is counted against the
bytes it replaced. Loss per token is over every target, `<|eos|>` included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from candorlm.config import ModelConfig
from candorlm.device import autocast
from candorlm.model import DecoderLM
from candorlm.tokenizer import Tokenizer

LN2 = float(np.log(2))


@dataclass
class DocScores:
    """Per-document sums: nats over all targets, nats over text targets, targets, UTF-8 bytes, unknown tokens."""

    nats: np.ndarray
    text_nats: np.ndarray
    tokens: np.ndarray
    bytes: np.ndarray
    unknown: np.ndarray

    def __len__(self) -> int:
        return len(self.bytes)

    def summary(self, vocab_size: int | None = None) -> dict[str, float]:
        """Totals; with `vocab_size`, also `uniform_bpb`: the bits-per-byte of a uniform guess over
        the vocabulary on the same tokens, the line a model must stay under to know anything."""
        tokens, nbytes = float(self.tokens.sum()), float(self.bytes.sum())
        loss = float(self.nats.sum()) / max(tokens, 1.0)
        out = {"bpb": float(self.text_nats.sum()) / LN2 / max(nbytes, 1.0), "loss": loss,
               "perplexity": float(np.exp(loss)), "documents": len(self), "tokens": int(tokens),
               "bytes": int(nbytes), "unknown_tokens": int(self.unknown.sum())}
        if vocab_size:
            out["uniform_bpb"] = round(tokens * float(np.log2(vocab_size)) / max(nbytes, 1.0), 4)
        return out


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`<|bos|> tokens <|eos|>` for each text (the layout the shards use)."""
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    return [bos + ids + eos for ids in tokenizer.encode_batch(list(texts))]


@torch.no_grad()
def token_nats(model: nn.Module, rows: list[list[int]], *, batch_size: int = 16,
               precision: str = "fp32") -> list[np.ndarray]:
    """Each row's next-token nats (length len(row) - 1), rows no longer than the context + 1.

    Rows are batched longest-first and right-padded; padding sits after every real position, so
    causal attention never lets it change a real token's score."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[np.ndarray] = [np.zeros(0)] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            picked = order[start:start + batch_size]
            width = max(len(rows[i]) for i in picked) - 1
            x = torch.zeros(len(picked), width, dtype=torch.long)
            y = torch.full((len(picked), width), -100, dtype=torch.long)
            for r, i in enumerate(picked):
                ids = torch.tensor(rows[i], dtype=torch.long)
                x[r, :len(ids) - 1], y[r, :len(ids) - 1] = ids[:-1], ids[1:]
            with autocast(precision, device):
                nats = model(input_ids=x.to(device), targets=y.to(device), reduction="none")
            nats = nats.double().reshape(len(picked), width).cpu().numpy()
            for r, i in enumerate(picked):
                out[i] = nats[r, :len(rows[i]) - 1]
    finally:
        model.train(was_training)
    return out


def score_documents(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], *, context: int | None = None,
                    batch_size: int = 16, precision: str = "fp32") -> DocScores:
    """Per-document nats, tokens and bytes of `texts` under `model`, windows of `context` tokens
    (default: the model's maximum)."""
    context = context or model.cfg.max_seq_len
    docs = encode_documents(tokenizer, texts)
    rows, owner = [], []
    for d, ids in enumerate(docs):
        for start in range(0, max(len(ids) - 1, 1), context):
            rows.append(ids[start:start + context + 1])
            owner.append(d)
    nats_rows = token_nats(model, rows, batch_size=batch_size, precision=precision)
    n = len(docs)
    nats, text_nats = np.zeros(n), np.zeros(n)
    tokens, unknown = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    eos, unk = tokenizer.eos_id, tokenizer.unk_id
    for row, d, values in zip(rows, owner, nats_rows):
        targets = np.asarray(row[1:])
        nats[d] += values.sum()
        text_nats[d] += values[targets != eos].sum()
        tokens[d] += len(targets)
        if unk is not None:
            unknown[d] += int((targets == unk).sum())
    nbytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
    return DocScores(nats, text_nats, tokens, nbytes, unknown)


def with_context(model: DecoderLM, length: int) -> DecoderLM:
    """The same weights with rotary tables for `length` positions: rotary embeddings have no
    learned positions, so the model runs past its training length (how well is what we measure)."""
    if length <= model.cfg.max_seq_len:
        return model
    cfg = ModelConfig(**{**model.cfg.model_dump(), "max_seq_len": length})
    longer = DecoderLM(cfg)
    longer.load_state_dict(model.state_dict())
    return longer.to(next(model.parameters()).device).eval()
