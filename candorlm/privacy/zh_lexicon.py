"""What the name model must not call a name: places, and a name with the next word's first character.

The span model scores names from their characters and surroundings; two mistakes survive it:

- places read as people (王府井, 石景山 start with surnames): a span that is a place name, lies
  inside one, or starts with a place of three or more characters (王府井大街), or ends like a
  street or district (路, 街, 区, 县), is no name. Places are People's Daily's `ns` words (the
  train and dev splits; never tagged `nr` there) and jieba's dictionary's longer `ns` words.
- a character said twice that the product reviews use often and People's Daily never as a
  name (谢谢, 常常: 谢 and 常 are surnames) is no name;
- a span that swallows the next word (李娜住在 -> 李娜住): a span of three or more characters
  may not end in a character that in People's Daily follows names far more often than it ends
  one (住, 说, 去, 在, ...).

The lists are fitted by `zh_names_fit.fit_lexicon` and ship as `data/zh_lexicon.json`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from candorlm.errors import CandorError
from candorlm.privacy.zh_spans import (_PAD, LENGTHS, VOCAB, HashTable, Spans, _Context, _substring_hash,
                                       char_ids, hash_words)

LEXICON_FILE = Path(__file__).parent / "data" / "zh_lexicon.json"
PLACE_ENDINGS = "路街区县省镇乡"  # a span ending so is an address part, not a person


@dataclass
class Lexicon:
    places: HashTable  # hash of a place word -> its length
    not_final: np.ndarray  # (VOCAB,) bool: characters a name of 3+ characters does not end with
    place_end: np.ndarray  # (VOCAB,) bool
    not_names: HashTable  # hash of a two-character word -> 1


@functools.lru_cache(maxsize=1)
def _data(path: Path = LEXICON_FILE) -> dict[str, list[str]]:
    if not path.is_file():
        raise CandorError(f"the Chinese name model's word lists {path} are missing; reinstall candorlm")
    return json.loads(path.read_text(encoding="utf-8"))


def place_words() -> list[str]:
    """Place names (People's Daily's and jieba's `ns` words), for names and addresses alike."""
    return _data()["places"]


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    data = _data()
    words = sorted(set(data["places"]), key=len)
    keys, lengths = [], []
    for L in LENGTHS:
        same = [w for w in words if len(w) == L]
        keys.append(hash_words(same))
        lengths.append(np.full(len(same), L, dtype=np.int8))
    not_final = np.zeros(VOCAB, dtype=bool)
    not_final[char_ids("".join(data["not_final"]))] = True
    place_end = np.zeros(VOCAB, dtype=bool)
    place_end[char_ids(PLACE_ENDINGS)] = True
    not_names = hash_words(data["not_names"])
    return Lexicon(HashTable(np.concatenate(keys), np.concatenate(lengths)), not_final, place_end,
                   HashTable(not_names, np.ones(len(not_names), dtype=np.int8), bits=14))


def vetoed(spans: Spans, c: _Context) -> np.ndarray:
    """For each candidate span, True when it is a place or ends in the next word (see above)."""
    lex = lexicon()
    n = c.n
    # Place words at every position: the longest one starting there (0: none).
    longest = np.zeros(n + 1, dtype=np.int64)
    for L in LENGTHS:
        if n < L:
            break
        at = np.arange(_PAD, _PAD + n - L + 1)
        hit = lex.places.lookup(_substring_hash(c.G, c.P, at, L)) == L
        longest[: n - L + 1][hit] = L
    # reach[s]: the furthest end of a place that starts at or before s.
    ends = np.where(longest > 0, np.arange(n + 1) + longest, 0)
    reach = np.maximum.accumulate(ends)
    s, L = spans.starts, spans.lengths
    e = s + L
    inside = reach[s] >= e
    place_prefix = (longest[s] >= 3) & (longest[s] < L)
    last = c.padded[e - 1 + _PAD]
    doubled = (L == 2) & (lex.not_names.lookup(c.pair[s + _PAD]) > 0)
    return inside | place_prefix | doubled | lex.place_end[last] | ((L >= 3) & lex.not_final[last])
