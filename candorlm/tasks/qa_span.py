"""Extractive question answering (`finetune --task qa --head span`): a reader that points at the
answer in the context instead of writing it.

Input, for any backbone (encoder or decoder):

    <|bos|> question <|sep|> context <|eos|>

The question comes first so that, under a decoder's causal attention, every context token has
already seen it. A `SpanReader` (candorlm.model.heads) gives each token a start and an end
logit; training is cross-entropy of the gold start and of the gold end over the context's tokens
(BERT on SQuAD). At inference the answer is the best legal span: start and end inside the
context, end at or after start, at most `max_answer` tokens; it is cut from the context by the
tokens' character offsets, so the answer is exactly the characters of the context (byte-level
BPE gives each token the characters its bytes came from; a token holding part of a character
covers that whole character).

One cheap input feature per context token, as DrQA's "exact match" feature: 1 when one of the
token's characters is part of a character bigram that also occurs in the question, else 0 (the
question's own tokens get 0). The reader still has to learn which unflagged stretch is the
answer and where a name stops; the feature only saves it from learning string matching.

Tokenizers: the character tokenizer (the default from scratch) can express every answer; a BPE
tokenizer merges characters across an answer's edge for about 8% of builtin:qa's answers
(e.g. 江泽民主席 is one token), which caps exact match near 0.92 whatever the reader learns.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from candorlm.beam import pad_training_batch
from candorlm.model import SpanReader, best_spans
from candorlm.tasks.base import Prepared
from candorlm.tasks.data import Record
from candorlm.tokenizer import Tokenizer, segment_words

MAX_QUESTION_TOKENS = 64


class Example(NamedTuple):
    ids: list[int]
    features: list[int]
    offset: int  # index in ids of the context's first token
    spans: list[tuple[int, int]]  # character (start, end) in the context of each context token
    gold: tuple[int, int] | None  # token (start, end) of the answer, inclusive; None: not in the kept context
    record: Record | dict[str, Any]


def encode_with_offsets(tok: Tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's (start, end) characters in it."""
    if tok.kind != "word":
        enc = tok.hf.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]  # type: ignore[misc]
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    at = 0
    for word in segment_words(text):  # Tokenizer._encode_words, keeping where each piece came from
        at = text.index(word, at)
        tid = tok.hf.token_to_id(word)
        if tid is not None:
            ids.append(tid)
            spans.append((at, at + len(word)))
        else:
            for k, ch in enumerate(word):
                t = tok.hf.token_to_id(ch)
                ids.append(tok.unk_id if t is None else t)
                spans.append((at + k, at + k + 1))
        at += len(word)
    return ids, spans


def question_flags(context: str, question: str) -> list[int]:
    """Per character of `context`: 1 when a character bigram holding it also occurs in `question`."""
    grams = {question[i:i + 2] for i in range(len(question) - 1)}
    return [int(context[max(i - 1, 0):i + 1] in grams and i > 0 or context[i:i + 2] in grams)
            for i in range(len(context))]


def encode(tok: Tokenizer, context: str, question: str, max_len: int, answer: str | None = None,
           answer_start: int | None = None, record: Any = None) -> Example:
    """One reader input (see the module doc), the context cut to fit `max_len` tokens."""
    q = tok.encode(question)[:MAX_QUESTION_TOKENS]
    c_ids, c_spans = encode_with_offsets(tok, context)
    room = max(1, max_len - len(q) - 3)
    c_ids, c_spans = c_ids[:room], c_spans[:room]
    flags = question_flags(context, question)
    c_feats = [int(any(flags[s:e])) for s, e in c_spans]
    ids = [tok.bos_id] + q + [tok.sep_id] + c_ids + [tok.eos_id]
    features = [0] * (len(q) + 2) + c_feats + [0]
    gold = None
    if answer:
        a = context.find(answer) if answer_start is None else answer_start
        if a >= 0:
            b = a + len(answer)
            inside = [k for k, (s, e) in enumerate(c_spans) if s < b and e > a]
            if inside:
                gold = (inside[0], inside[-1])
    return Example(ids, features, len(q) + 2, c_spans, gold, record)


def prepare(tok: Tokenizer, backbone: nn.Module, splits: dict[str, list[Record]], info: dict[str, Any],
            max_answer: int) -> Prepared:
    cfg = backbone.cfg
    model = SpanReader(backbone)

    def examples(split: str) -> list[Example]:
        return [encode(tok, r["context"], r["question"], cfg.max_seq_len, r["answer"], record=r) for r in splits[split]]

    train = [e for e in examples("train") if e.gold is not None]  # an answer cut off with the context teaches nothing
    return Prepared(model, cfg, tok, None, train, examples("dev"), {**info, "head": "span", "max_answer": max_answer},
                    splits)


def _batch(examples: Sequence[Example], pad_id: int, device: torch.device, limit: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """With `limit`, a training batch (beam.pad_training_batch); without, as it is."""
    ids, mask = pad_training_batch([e.ids for e in examples], pad_id, limit)
    feats, _ = pad_training_batch([e.features for e in examples], 0, limit)
    allowed = torch.zeros_like(mask, dtype=torch.bool)
    for row, e in enumerate(examples):
        allowed[row, e.offset:e.offset + len(e.spans)] = True
    return ids.to(device), mask.to(device), feats.to(device), allowed.to(device)


def loss(model: nn.Module, batch: Sequence[Example], device: torch.device, prepared: Prepared) -> torch.Tensor:
    ids, mask, feats, allowed = _batch(batch, prepared.tokenizer.pad_id, device, prepared.model_config.max_seq_len)
    start, end = model(ids, mask, feats)
    start, end = start.masked_fill(~allowed, -1e4), end.masked_fill(~allowed, -1e4)
    gold_s = torch.tensor([e.offset + e.gold[0] for e in batch], device=device)  # type: ignore[index]
    gold_e = torch.tensor([e.offset + e.gold[1] for e in batch], device=device)  # type: ignore[index]
    return (F.cross_entropy(start, gold_s) + F.cross_entropy(end, gold_e)) / 2


@torch.no_grad()
def predict(model: nn.Module, examples: Sequence[Example], contexts: Sequence[str], pad_id: int, max_answer: int,
            batch_size: int = 64) -> list[str]:
    """The best legal span of each example, as the exact characters of its context."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    out = [""] * len(examples)
    try:
        for at in range(0, len(order), batch_size):
            idx = order[at:at + batch_size]
            ids, mask, feats, allowed = _batch([examples[i] for i in idx], pad_id, device)
            start, end = model(ids, mask, feats)
            for i, (s, e) in zip(idx, best_spans(start, end, allowed, max_answer)):
                ex = examples[i]
                if e >= s:
                    out[i] = contexts[i][ex.spans[s - ex.offset][0]:ex.spans[e - ex.offset][1]]
    finally:
        model.train(was_training)
    return out


def answer(model: nn.Module, tok: Tokenizer, items: Sequence[dict[str, str]], max_answer: int) -> list[str]:
    """Answers to {"context", "question"} items with a span reader."""
    examples = [encode(tok, r["context"], r["question"], model.cfg.max_seq_len) for r in items]
    return predict(model, examples, [r["context"] for r in items], tok.pad_id, max_answer)
