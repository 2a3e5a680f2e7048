"""Held-out examples the start run already read: a fine-tune's test split against the text its
start run was pretrained on.

A model fine-tuned from a pretrained run is scored on held-out test examples, but "held out" is
only true of the fine-tuning data: when a test paragraph was in the pretraining corpus (builtin:qa
and builtin:chat are built from People's Daily, and so is a run pretrained on
builtin:peoples-daily), part of its score may be memory. As GPT-3's authors did with 13-word
windows, a test example counts as seen when any WINDOW-character passage of it (whitespace
removed) occurs in the pretraining data's training split. So it misses what is shorter (a
paragraph under WINDOW characters; `too_short` counts the examples with no passage that long at
all) and counts a long stock phrase shared with another text. It decodes that split's shards, so
it needs the data directory the start run names, and gives up, saying why, on one larger than
MAX_TOKENS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from candorlm.config import RunConfig
from candorlm.errors import CandorError
from candorlm.shards import ShardSet
from candorlm.tasks.data import TEST_FRACTION

WINDOW = 32  # characters: longer than a common phrase (中共中央总书记、国家主席江泽民 is 15), shorter than a sentence
MAX_TOKENS = 20_000_000  # pretraining splits past this are not decoded (minutes, and 8 bytes a character)
CHUNK = 1_000_000  # tokens decoded at a time
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: the rolling hash's multiplier, arithmetic mod 2**64


def _codes(text: str) -> np.ndarray:
    return np.frombuffer("".join(text.split()).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def window_hashes(text: str, window: int = WINDOW) -> np.ndarray:
    """A hash of every `window`-character passage of `text` (whitespace removed); empty when shorter."""
    codes = _codes(text)
    n = len(codes) - window + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    out = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(window):
            out = out * _BASE + codes[j:j + n]
    return out


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a record's fields (messages' contents, context, question, text, ...)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def pretraining_overlap(config: RunConfig, records: Sequence[Any], window: int = WINDOW) -> dict[str, Any]:
    """How many of `records` (a task's test split) share a `window`-character passage with the
    training split of the data the start run (its `config`) was pretrained on; with `checked`
    False and `why` when that cannot be told."""
    data = Path(config.data.path) if config.data.path else None
    if data is None or not (data / "meta.json").is_file():
        return {"checked": False, "data": config.data.path or None,
                "why": "the start run's pretraining data directory is not here (moved, deleted, or not a prepared one)"}
    try:
        shards = ShardSet(data)
        if shards.meta.tokens["train"] > MAX_TOKENS:
            return {"checked": False, "data": str(data),
                    "why": f"its training split holds {shards.meta.tokens['train']:,} tokens; the check decodes at most {MAX_TOKENS:,}"}
        seen = np.unique(np.concatenate([np.zeros(0, np.uint64), *_shard_hashes(shards, window)]))
    except CandorError as exc:
        return {"checked": False, "data": str(data), "why": str(exc)}
    hashes = [_record_hashes(r, window) for r in records]
    hits = [_any_in(h, seen) for h in hashes]
    return {"checked": True, "data": str(data), "sources": list(shards.meta.sources),
            "val_fraction": shards.meta.val_fraction, "window_chars": window,
            "test_examples": len(records), "seen": sum(hits), "share": round(sum(hits) / max(len(records), 1), 4),
            "too_short": sum(not len(h) for h in hashes)}


def _shard_hashes(shards: ShardSet, window: int) -> Iterator[np.ndarray]:
    """The training split's window hashes, decoded CHUNK tokens at a time (a Python list of every
    token id of a large split would be gigabytes); a chunk starts `window` tokens before the last
    one ended, so no passage is lost at its edge."""
    for a in shards.arrays("train"):
        for start in range(0, len(a), CHUNK):
            ids = a[max(0, start - window):start + CHUNK].tolist()
            yield window_hashes(shards.tokenizer.decode(ids), window)


def _any_in(hashes: np.ndarray, seen: np.ndarray) -> bool:
    """Whether any of `hashes` is in the sorted array `seen` (a binary search each: np.isin would
    sort the millions of `seen` again for every record)."""
    if not len(hashes) or not len(seen):
        return False
    at = np.minimum(np.searchsorted(seen, hashes), len(seen) - 1)
    return bool((seen[at] == hashes).any())


def _record_hashes(record: Any, window: int) -> np.ndarray:
    fields = getattr(record, "fields", record)
    parts: Iterable[np.ndarray] = (window_hashes(s, window) for s in _strings(fields))
    return np.concatenate([np.zeros(0, np.uint64), *parts])


def overlap_warning(overlap: dict[str, Any], run: Any) -> str | None:
    """One line for the log when test examples were in the pretraining data (None when none were)."""
    if not overlap.get("checked") or not overlap.get("seen"):
        return None
    hint = ""
    if "builtin:peoples-daily" in overlap.get("sources", ()) and overlap.get("val_fraction", 0) < TEST_FRACTION:
        hint = (" builtin:qa, builtin:chat and builtin:pinyin hold out the People's Daily articles whose hash is "
                "under 10%: prepare the pretraining data with --val-fraction 0.1 to leave exactly those out.")
    return (f"{overlap['seen']:,} of {overlap['test_examples']:,} test examples ({overlap['share']:.1%}) share a "
            f"{overlap['window_chars']}-character passage with the text {run} was pretrained on ({overlap['data']}): "
            f"their scores may be memory, not skill.{hint}")
