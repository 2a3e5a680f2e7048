"""A character n-gram language model: interpolated Kneser-Ney with modified discounts (Chen &
Goodman 1998), counted with numpy over integer ids, stored as safetensors arrays.

Why our own: no dependency of candorlm builds one (nltk is not one, and nltk.lm scores one
n-gram at a time in Python, far too slow to score a beam over a test split; the kenlm wheel
queries ARPA files but does not estimate them: that is its lmplz binary, a C++ build). Counting
and the smoothing are ~100 lines of numpy; a query is a few binary searches.

The model (order N, vocabulary of V ids, sentences padded with N-1 <bos> and ended by <eos>):

    p_n(w | h) = max(c_n(hw) - D_n(c_n(hw)), 0) / c_n(h.) + gamma_n(h) * p_{n-1}(w | h')
    gamma_n(h) = (D_n1 * N1(h.) + D_n2 * N2(h.) + D_n3 * N3+(h.)) / c_n(h.)
    p_0(w)     = 1 / V

where h' is h without its first id, c_N is the raw count, c_n (n < N) the continuation count
(how many distinct ids precede hw), N1(h.) how many w have c_n(hw) = 1 (N2, N3+ alike), and
D_n1, D_n2, D_n3 the discounts estimated from the counts of counts. A history never seen at
order n passes p_{n-1} through unchanged. Every p_n(. | h) sums to 1 over the V ids.

Stored: per order n, the seen n-grams as sorted int64 keys (ids in base V), each one's first
term above (float32), and the seen histories' keys with their gamma. A query is a searchsorted
per order, vectorised over any number of (history, id) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from candorlm.errors import CandorError

FORMAT = "candorlm n-gram 1"


class NgramLM:
    """An interpolated Kneser-Ney n-gram model over ids 0..vocab_size-1 (see the module doc)."""

    def __init__(self, order: int, vocab_size: int, bos: int, eos: int, arrays: dict[str, np.ndarray],
                 discounts: list[list[float]]) -> None:
        self.order, self.vocab_size, self.bos, self.eos = order, vocab_size, bos, eos
        self.arrays, self.discounts = arrays, discounts

    # ------------------------------------------------------------ estimation

    @classmethod
    def build(cls, sentences: Iterable[Sequence[int]], *, order: int, vocab_size: int, bos: int,
              eos: int) -> "NgramLM":
        """Count `sentences` (sequences of ids, without <bos>/<eos>) and smooth the counts."""
        if order < 1:
            raise CandorError(f"an n-gram model needs order >= 1, got {order}")
        if float(vocab_size) ** order >= 2.0 ** 62:
            raise CandorError(f"order {order} over {vocab_size} ids does not fit 64-bit keys; use a lower order")
        V = vocab_size
        seqs = [np.asarray([bos] * (order - 1) + list(s) + [eos], dtype=np.int64) for s in sentences]
        seqs = [s for s in seqs if len(s) >= order]
        if not seqs:
            raise CandorError("an n-gram model needs at least one sentence to count")
        keys = np.concatenate([_windows(s, order, V) for s in seqs])
        grams, counts = np.unique(keys, return_counts=True)
        arrays: dict[str, np.ndarray] = {}
        discounts: list[list[float]] = [[0.0, 0.0, 0.0]] * (order + 1)
        for n in range(order, 0, -1):
            d = _discounts(counts)
            discounts[n] = d
            hist = grams // V  # the history of each n-gram (0 for n = 1: one empty history)
            uniq, inv = np.unique(hist, return_inverse=True)
            total = np.bincount(inv, weights=counts).astype(np.float64)
            dc = np.where(counts == 1, d[0], np.where(counts == 2, d[1], d[2]))
            first = np.maximum(counts - dc, 0.0) / total[inv]
            spent = np.bincount(inv, weights=np.minimum(dc, counts)).astype(np.float64)
            arrays[f"keys.{n}"], arrays[f"first.{n}"] = grams, first.astype(np.float32)
            arrays[f"hist.{n}"], arrays[f"gamma.{n}"] = uniq.astype(np.int64), (spent / total).astype(np.float32)
            if n > 1:  # continuation counts of the (n-1)-grams: the distinct ids seen before each
                lower, cont = np.unique(grams % V ** (n - 1), return_counts=True)
                grams, counts = lower, cont
        return cls(order, V, bos, eos, arrays, discounts)

    # ------------------------------------------------------------ queries

    def prob(self, history: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """p(ids | history): history (..., k) ids, the most recent last (k >= order - 1 reads the
        last order-1; fewer are read as they are, a shorter history), ids (...) -> float64 (...)."""
        history = np.asarray(history, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        V = self.vocab_size
        p = np.full(ids.shape, 1.0 / V)
        k = history.shape[-1]
        for n in range(1, self.order + 1):
            if n - 1 > k:
                break
            h = np.zeros(ids.shape, dtype=np.int64)
            for j in range(n - 1, 0, -1):  # the last n-1 ids of the history, in base V
                h = h * V + history[..., k - j]
            gamma, seen = _lookup(self.arrays[f"hist.{n}"], self.arrays[f"gamma.{n}"], h)
            first, _ = _lookup(self.arrays[f"keys.{n}"], self.arrays[f"first.{n}"], h * V + ids)
            p = np.where(seen, first + gamma * p, p)
        return p

    def grid(self, history: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """log p(id | history) for every pair of a history and an id of the same row: history
        (L, B, order-1), ids (L, K) -> (L, B, K). The same numbers as `logprob`, with the lookups
        that depend on one side only made once (a beam search's B histories x K candidates)."""
        history = np.asarray(history, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        V, (L, B, k), K = self.vocab_size, history.shape, ids.shape[1]
        p = np.full((L, B, K), 1.0 / V)
        for n in range(1, min(self.order, k + 1) + 1):
            h = np.zeros((L, B), dtype=np.int64)
            for j in range(n - 1, 0, -1):
                h = h * V + history[..., k - j]
            gamma, seen = _lookup(self.arrays[f"hist.{n}"], self.arrays[f"gamma.{n}"], h)
            query = ids[:, None, :] if n == 1 else h[:, :, None] * V + ids[:, None, :]
            first, _ = _lookup(self.arrays[f"keys.{n}"], self.arrays[f"first.{n}"], query)
            p = np.where(seen[:, :, None], first + gamma[:, :, None] * p, p)
        return np.log(p)

    def logprob(self, history: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Natural log of `prob`."""
        return np.log(self.prob(history, ids))

    def distribution(self, history: Sequence[int]) -> np.ndarray:
        """p(. | history) over all vocab_size ids."""
        ids = np.arange(self.vocab_size)
        hist = np.broadcast_to(np.asarray(history, dtype=np.int64), (self.vocab_size, len(history)))
        return self.prob(hist, ids)

    def start(self) -> list[int]:
        """The history of a sentence's first id."""
        return [self.bos] * (self.order - 1)

    # ------------------------------------------------------------ storage

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        meta = {"format": FORMAT, "order": self.order, "vocab_size": self.vocab_size, "bos": self.bos,
                "eos": self.eos, "discounts": self.discounts}
        save_file(self.arrays, str(path), metadata={"ngram": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path, data: bytes | None = None) -> "NgramLM":
        """The model in `path` (or its bytes in `data`: an encrypted run's file, decrypted); a missing,
        damaged or foreign file is a one-line CandorError."""
        from safetensors.numpy import load

        try:
            raw = data if data is not None else Path(path).read_bytes()
        except OSError as e:
            raise CandorError(f"{path}: cannot read the n-gram model ({e.strerror or e})") from None
        try:
            arrays = load(raw)
            meta = json.loads(_metadata(raw)["ngram"])
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            order = int(meta["order"])
            names = {f"{a}.{n}" for a in ("keys", "first", "hist", "gamma") for n in range(1, order + 1)}
            if set(arrays) != names:
                raise ValueError(f"arrays {sorted(arrays)}")
            lm = cls(order, int(meta["vocab_size"]), int(meta["bos"]), int(meta["eos"]), arrays, meta["discounts"])
        except CandorError:
            raise
        except Exception as e:  # safetensors, json and key errors alike: one line naming the file
            raise CandorError(f"{path} is not a candorlm n-gram model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'damaged'}); "
                              f"rebuild it (candorlm.tasks.translate_lm.attach_lm)") from None
        return lm

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _windows(seq: np.ndarray, n: int, V: int) -> np.ndarray:
    """The keys (base V) of every n-id window of seq."""
    key = np.zeros(len(seq) - n + 1, dtype=np.int64)
    for j in range(n):
        key = key * V + seq[j:len(seq) - n + 1 + j]
    return key


def _discounts(counts: np.ndarray) -> list[float]:
    """Modified Kneser-Ney discounts D1, D2, D3+ from the counts of counts (Chen & Goodman); where
    the counts are too few to estimate them (tiny data), 0.5, 1, 1.5."""
    n1, n2, n3, n4 = (int(np.sum(counts == k)) for k in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:
        return [0.5, 1.0, 1.5]
    y = n1 / (n1 + 2 * n2)
    d = [1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3]
    return [float(min(max(x, 0.05), k + 1 - 0.05)) for k, x in enumerate(d)]


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values at the positions of `query` in the sorted `keys` (0 where absent), and whether present."""
    at = np.searchsorted(keys, query)
    at = np.minimum(at, len(keys) - 1)
    seen = keys[at] == query
    return np.where(seen, values[at], 0.0), seen


def _metadata(raw: bytes) -> dict[str, str]:
    """A safetensors file's __metadata__ (its JSON header)."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]).get("__metadata__") or {}
