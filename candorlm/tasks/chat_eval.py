"""Dialogue scored on what it gets right: each assistant turn of the test conversations is
written greedily after the true history, and scored by its kind of turn:

- sentiment turns (builtin:chat's product reviews): the label is right, i.e. the first of
  好评 / 差评 in the reply is the gold one;
- reading turns (builtin:chat's People's Daily paragraphs): exact match and character F1
  after removing spaces and punctuation, as `--task qa`;
- other turns (a user's own conversations): exact match and character F1 as well.

Next to them, for every turn kind: the share of replies that came with and without a system
message, scored apart (the model must answer without the secret); a degeneracy figure, the
share of replies in which one character n-gram (2 to 8 characters) occurs more than 3 times;
and, when given, the single-task models (a sentiment classifier, a QA reader) scored on the
same turns, as the baselines the chat model should approach.

A `limit` takes turns round-robin by kind, so a short evaluation still scores every kind, and
each kind's turns evenly spaced over the split (the data's order is not random).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import torch
from torch import nn

from candorlm.beam import DecoderSession, greedy_search
from candorlm.progress import batched
from candorlm.tasks.data import Record
from candorlm.tokenizer import Tokenizer

LABELS = ("好评", "差评")
REPEAT_LIMIT = 3  # a reply is degenerate when an n-gram occurs more than this many times
NO_REPEAT_NGRAM = 3  # decoding default for replies, chosen by bench/chat_decoding.py (see docs/tasks.md)
MAX_REPLY_TOKENS = 24


def degenerate(text: str, limit: int = REPEAT_LIMIT, sizes: range = range(2, 9)) -> bool:
    """True when some character n-gram (n in `sizes`) occurs more than `limit` times in `text`
    (counting overlapping occurrences, so 哈哈哈哈哈 has 哈哈 four times)."""
    for n in sizes:
        counts: dict[str, int] = defaultdict(int)
        for i in range(len(text) - n + 1):
            gram = text[i:i + n]
            counts[gram] += 1
            if counts[gram] > limit:
                return True
    return False


def label_of(reply: str) -> str:
    """The first of 好评 / 差评 in a reply ('' when neither is there)."""
    found = [(reply.find(lab), lab) for lab in LABELS if lab in reply]
    return min(found)[1] if found else ""


def turn_kind(rec: Record, turn: int) -> str:
    kind = rec["kind"]
    if kind == "reading":
        return "reading, first question" if turn == 0 else "reading, follow-up"
    return kind


def turns(tok: Tokenizer, records: Sequence[Record], max_len: int, budget: int,
          limit: int | None = None) -> list[dict[str, Any]]:
    """Every assistant turn that fits the context: prompt ids (the true history before it), gold
    reply, kind, whether the conversation has a system message, and the turn's source (for the
    baselines). With `limit`, that many turns taken round-robin by kind, each kind's evenly spaced
    over its turns."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        sources = r.fields.get("sources") or []
        system = bool(r["messages"]) and r["messages"][0]["role"] == "system"
        n = 0
        for i, m in enumerate(r["messages"]):
            if m["role"] != "assistant":
                continue
            ids, _ = tok.encode_chat(r["messages"][:i], add_generation_prompt=True)
            if len(ids) + budget <= max_len:
                kind = turn_kind(r, n)
                by_kind[kind].append({"prompt": ids, "gold": m["content"], "kind": kind, "system": system,
                                      "source": sources[n] if n < len(sources) else None})
            n += 1
    out: list[dict[str, Any]] = []
    queues = [list(v) for _, v in sorted(by_kind.items())]
    if limit is not None:
        # Each kind's share of the limit (round-robin), taken evenly spaced over that kind's turns:
        # the data's order is not random (builtin:reviews lists positive reviews first, so the
        # first 20 sentiment turns were all 好评 and a model answering 好评 to everything scored 100%).
        quota = [0] * len(queues)
        while sum(quota) < limit and any(q < len(v) for q, v in zip(quota, queues)):
            for k, v in enumerate(queues):
                if quota[k] < len(v) and sum(quota) < limit:
                    quota[k] += 1
        queues = [[v[i * len(v) // q] for i in range(q)] if q else [] for q, v in zip(quota, queues)]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


@torch.no_grad()
def replies(model: nn.Module, tok: Tokenizer, prompts: Sequence[list[int]], max_new_tokens: int = MAX_REPLY_TOKENS,
            no_repeat_ngram: int = NO_REPEAT_NGRAM, batch_size: int = 32) -> list[str]:
    """Greedy replies to chat prompts (ending with <|assistant|>), stopped at <|end|>, with no
    token n-gram repeated inside a reply (0: plain greedy)."""
    stop = tok.ids["end"]
    suppress = sorted(i for i in tok.special_ids if i not in (stop, tok.eos_id))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for idx in batched(order, batch_size):
            rows = [prompts[i] for i in idx]
            budget = max(1, min(max_new_tokens, model.cfg.max_seq_len - max(len(r) for r in rows)))
            session = DecoderSession(model, rows, pad_id=tok.pad_id, max_new_tokens=budget)
            hyps = greedy_search(session, eos_id=stop, max_new_tokens=budget, suppress_ids=suppress,
                                 no_repeat_ngram=no_repeat_ngram)
            for i, ids in zip(idx, hyps):
                out[i] = tok.decode([t for t in ids if t != tok.eos_id]).strip()
    finally:
        model.train(was_training)
    return out


def score_turns(preds: Sequence[str], items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of turn: n, the right share (label accuracy, or exact match and char-F1), the same
    with and without a system message, and the degenerate share; then the totals."""
    from candorlm.tasks.qa import char_f1, normalize

    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for pred, item in zip(preds, items):
        if item["kind"] == "sentiment":
            row = {"label_accuracy": float(label_of(pred) == item["gold"])}
        else:
            row = {"exact_match": float(normalize(pred) == normalize(item["gold"])),
                   "char_f1": char_f1(pred, item["gold"])}
        row["right"] = row.get("label_accuracy", row.get("exact_match", 0.0))
        row["degenerate"] = float(degenerate(pred))
        row["system"] = item["system"]
        rows[item["kind"]].append(row)

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    by_kind = {}
    for kind, rs in sorted(rows.items()):
        keys = [k for k in rs[0] if k not in ("right", "system")]
        by_kind[kind] = {"n": len(rs), **{k: mean([r[k] for r in rs]) for k in keys},
                         "right_with_system": mean([r["right"] for r in rs if r["system"]]),
                         "right_without_system": mean([r["right"] for r in rs if not r["system"]])}
    every = [r for rs in rows.values() for r in rs]
    return {"turns": len(every), "right": mean([r["right"] for r in every]),
            "degenerate": mean([r["degenerate"] for r in every]), "by_kind": by_kind}
