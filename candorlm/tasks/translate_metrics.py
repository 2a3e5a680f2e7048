"""Translation metrics: character accuracy (an edit-distance character error rate turned around),
Chinese-character accuracy, chrF and BLEU (sacrebleu). See candorlm.tasks.translate's module doc
for what each measures."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Sequence

from candorlm.tasks.data import Record


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def matched(hyp: str, ref: str) -> list[bool]:
    """For each reference character, whether a minimum-edit alignment maps an equal output character to it."""
    n, m = len(hyp), len(ref)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (hyp[i - 1] != ref[j - 1]))
    hits = [False] * m
    i, j = n, m
    while i > 0 and j > 0:
        if d[i][j] == d[i - 1][j - 1] + (hyp[i - 1] != ref[j - 1]):
            hits[j - 1] = hyp[i - 1] == ref[j - 1]
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return hits


def han_accuracy(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """The share of the references' Chinese characters that the output gets right (under a
    minimum-edit alignment): character accuracy without the punctuation and digits that a
    pinyin source spells out."""
    hits = total = 0
    for h, r in zip(hyps, refs):
        for ch, ok in zip(r, matched(h, r)):
            if _is_han(ch):
                total += 1
                hits += ok
    return hits / max(total, 1)


def char_accuracy(hyps: Sequence[str], refs: Sequence[str]) -> float:
    total = sum(len(r) for r in refs)
    errors = sum(edit_distance(h, r) for h, r in zip(hyps, refs))
    return max(0.0, 1.0 - errors / max(total, 1))


def scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    import sacrebleu

    return {"char_accuracy": round(char_accuracy(hyps, refs), 4),
            "han_char_accuracy": round(han_accuracy(hyps, refs), 4),
            "chrf": round(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score, 2),
            "bleu": round(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="zh").score, 2),
            "exact_match": round(sum(h == r for h, r in zip(hyps, refs)) / max(len(refs), 1), 4)}


def aligned(records: Sequence[Record]) -> bool:
    """True when every pair has one source token per target character (pinyin-style)."""
    return all(len(r["source"].split()) == len(r["target"]) for r in records)


def baseline(train: Sequence[Record], test: Sequence[Record]) -> dict[str, Any]:
    """Most frequent character per source token (aligned pairs), else a copy of the source."""
    if not aligned(train) or not aligned(test):
        hyps = [r["source"] for r in test]
        return {"name": "copy the source", **scores(hyps, [r["target"] for r in test])}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in train:
        for syllable, ch in zip(r["source"].split(), r["target"]):
            counts[syllable][ch] += 1
    best = {s: c.most_common(1)[0][0] for s, c in counts.items()}
    hyps = ["".join(best.get(s, "") for s in r["source"].split()) for r in test]
    unseen = sum(s not in best for r in test for s in r["source"].split())
    return {"name": "most frequent character per source token (training split)", "unseen_tokens": unseen,
            **scores(hyps, [r["target"] for r in test])}
