"""NB-weighted logistic regression on character and word n-grams (NB-LR; Wang & Manning 2012,
"Baselines and Bigrams", their NBSVM with a logistic loss), and its mix with a fine-tuned classifier.

A text is the set of its character 1-4-grams and word 1-2-grams (jieba; binary features: present
or not). Each n-gram's log-count ratio between the classes (add-one smoothed: how much more often
it occurs in one class's texts than in the other's) scales its feature before a logistic regression:

    r = log((p / |p|_1) / (q / |q|_1)),  p = 1 + sum of x over the class's texts, q = the same over the rest
    logit(text) = b + sum over the text's n-grams g of  coef_g * r_g

It is of the same family as the TF-IDF + logistic regression baseline (a linear model on
n-grams), with the Naive Bayes ratios in place of TF-IDF and word n-grams added: on sentiment those ratios are
what the words mean, and the regression only has to correct them. Two labels: one model (label 1
against label 0); more: one per label against the rest, normalised.

The stored model is `nblr.safetensors` (the products coef * r, one row per model, and the
biases) and `nblr.json` (the n-grams in index order and the settings); no pickle. Predicting
needs neither scikit-learn nor the training data: a text's score is a sum of looked-up weights.

The mix with the fine-tuned classifier (`mix`) averages the two models' log-probabilities,
renormalised (for two labels: a weighted average of the two log-odds):

    log p(label) = (1 - weight) * log p_encoder(label) + weight * log p_nblr(label) + const

weight 0 is the fine-tuned classifier alone; the weight is chosen on the dev split (`choose`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from candorlm.errors import CandorError

WEIGHTS_FILE = "nblr.safetensors"
VOCAB_FILE = "nblr.json"
FORMAT = "candorlm-nblr-1"
# The settings, chosen on builtin:reviews' dev split with a fine-tuned encoder (bench/sentiment_nblr.py;
# docs/benchmarks/tasks.md): character 1-3, 1-4, 1-5-grams, with and without word 1-2-grams, C 0.1 to
# 10, min_df 1 or 2. The best dev accuracy of the mix, 0.878, was a tie between min_df 1 and 2; min_df 2
# keeps 363k features instead of 1.85M. Every setting was within 1.2 points (one standard error of
# the 752 dev reviews) of it.
NGRAMS = (1, 4)  # character n-gram lengths
WORDS = 2  # word n-grams (jieba's segmentation) beside the characters: 0 none, 2 word 1-2-grams
C = 1.0  # inverse L2 strength of the regression
MIN_DF = 2  # an n-gram is a feature when at least this many training texts have it
MIX_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # weights tried on dev


WORD = "\x01"  # starts a word n-gram's feature name, so that it never equals a character n-gram


def ngrams(text: str, lo: int, hi: int, words: int = 0) -> set[str]:
    """The character n-grams of `text` (lower-cased), lengths lo..hi; with `words` > 0, also its
    word 1..words-grams (jieba's segmentation), each named WORD + the words joined by spaces."""
    t = text.lower()
    out = {t[i:i + n] for n in range(lo, hi + 1) for i in range(len(t) - n + 1)}
    if words:
        import jieba

        w = [x for x in jieba.lcut(t) if x.strip()]
        out |= {WORD + " ".join(w[i:i + n]) for n in range(1, words + 1) for i in range(len(w) - n + 1)}
    return out


def nb_ratio(x: Any, positive: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The log-count ratio of each feature (column of the binary matrix `x`) between the rows
    where `positive` is true and the rest, add-`alpha` smoothed."""
    pos = np.asarray(positive, dtype=bool)
    if pos.all() or not pos.any():
        raise CandorError("the NB ratios need texts of both classes in the training split")
    p = alpha + np.asarray(x[pos].sum(0)).ravel()
    q = alpha + np.asarray(x[~pos].sum(0)).ravel()
    return (np.log(p / p.sum()) - np.log(q / q.sum())).astype(np.float32)


@dataclass
class NBLR:
    """A fitted NB-LR: `weights` (M, V) are coef * r per model (M = 1 for two labels, else one per
    label), so a text's logit is its n-grams' weights summed, plus `bias` (M,)."""

    ngram_range: tuple[int, int]
    vocabulary: list[str]
    weights: np.ndarray
    bias: np.ndarray
    n_labels: int
    settings: dict[str, Any]
    words: int = 0

    def __post_init__(self) -> None:
        self.index = {g: i for i, g in enumerate(self.vocabulary)}

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(N, M): each model's logit for each text."""
        out = np.empty((len(texts), self.weights.shape[0]), dtype=np.float64)
        lo, hi = self.ngram_range
        for i, text in enumerate(texts):
            idx = [j for g in ngrams(text, lo, hi, self.words) if (j := self.index.get(g)) is not None]
            out[i] = self.weights[:, idx].sum(1, dtype=np.float64) + self.bias
        return out

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(N, n_labels): two labels, sigmoid of the one logit; more, each label's sigmoid normalised."""
        z = self.logits(texts)
        if self.n_labels == 2:
            p1 = 1 / (1 + np.exp(-z[:, 0]))
            return np.stack([1 - p1, p1], 1)
        s = 1 / (1 + np.exp(-z))
        return s / s.sum(1, keepdims=True)

    # ------------------------------------------------------------ storage

    def save(self, out: Path) -> None:
        """nblr.safetensors and nblr.json into the directory `out`."""
        from safetensors.numpy import save

        from candorlm.io.files import atomic_write_bytes, atomic_write_text

        # whole or not at all: an interrupted save leaves no half file under the run's name
        atomic_write_bytes(Path(out) / WEIGHTS_FILE, save(
            {"weights": np.ascontiguousarray(self.weights, dtype=np.float32),
             "bias": np.asarray(self.bias, dtype=np.float32)}, metadata={"format": FORMAT}))
        # one line: hundreds of thousands of n-grams, one per line, would add megabytes of indentation
        atomic_write_text(Path(out) / VOCAB_FILE, json.dumps(
            {"format": FORMAT, "ngram_range": list(self.ngram_range), "words": self.words, "n_labels": self.n_labels,
             "settings": self.settings, "vocabulary": self.vocabulary}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, run: Path, verify: bool = True) -> "NBLR":
        """The NB-LR stored in the run directory `run`; a missing, damaged or foreign file (or one
        that does not match the run's manifest) is a one-line CandorError."""
        from safetensors.numpy import load

        from candorlm.io.manifest import MANIFEST_NAME, check_files
        from candorlm.io.sealed import is_encrypted, read_bytes

        run = Path(run)
        paths = [run / WEIGHTS_FILE, run / VOCAB_FILE]
        for path in paths:
            if not path.is_file():
                raise CandorError(f"{path} is missing; the run's task.json names an NB-LR ensemble. Fine-tune again "
                                  f"with --ensemble nblr, or remove task.json's \"ensemble\" entry to use the "
                                  f"classifier alone")
        plain = [p for p in paths if not is_encrypted(p)]
        if verify and plain and (run / MANIFEST_NAME).is_file():
            check_files(run, plain, what="run")
        try:
            raw = [read_bytes(p) if is_encrypted(p) else p.read_bytes() for p in paths]
            arrays = load(raw[0])
            meta = json.loads(raw[1].decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            weights, bias = arrays["weights"], arrays["bias"]
            vocabulary = meta["vocabulary"]
            lo, hi = (int(n) for n in meta["ngram_range"])
            n_labels = int(meta["n_labels"])
            rows = 1 if n_labels == 2 else n_labels
            if weights.shape != (rows, len(vocabulary)) or bias.shape != (rows,):
                raise ValueError(f"weights {weights.shape} and bias {bias.shape} for {len(vocabulary)} n-grams, "
                                 f"{n_labels} labels")
            if not all(isinstance(g, str) for g in vocabulary) or not 1 <= lo <= hi:
                raise ValueError("bad n-grams")
        except CandorError:
            raise
        except Exception as e:  # safetensors, JSON and key errors alike: one line naming the run
            raise CandorError(f"{run}: {WEIGHTS_FILE} / {VOCAB_FILE} are not a candorlm NB-LR model "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'damaged'})") from None
        return cls((lo, hi), vocabulary, weights, bias, n_labels, meta.get("settings") or {}, int(meta.get("words", 0)))


def fit(texts: Sequence[str], labels: Sequence[int], n_labels: int, ngram_range: tuple[int, int] = NGRAMS,
        c: float = C, min_df: int = MIN_DF, words: int = WORDS) -> NBLR:
    """NB-LR fitted on `texts` with integer `labels` in [0, n_labels) (scikit-learn's liblinear)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    lo, hi = ngram_range
    vectorizer = CountVectorizer(analyzer=lambda t: ngrams(t, lo, hi, words), binary=True, min_df=min_df,
                                 dtype=np.float32)
    x = vectorizer.fit_transform(texts).tocsr()
    vocabulary = [""] * len(vectorizer.vocabulary_)
    for g, j in vectorizer.vocabulary_.items():
        vocabulary[j] = g
    y = np.asarray(labels)
    targets = [y == 1] if n_labels == 2 else [y == k for k in range(n_labels)]
    weights, bias = [], []
    for positive in targets:
        r = nb_ratio(x, positive)
        clf = LogisticRegression(C=c, solver="liblinear", max_iter=1000).fit(x.multiply(r).tocsr(), positive)
        weights.append(clf.coef_[0].astype(np.float32) * r)
        bias.append(float(clf.intercept_[0]))
    return NBLR((lo, hi), vocabulary, np.stack(weights), np.asarray(bias, dtype=np.float32), n_labels,
                {"C": c, "min_df": min_df, "alpha": 1.0, "texts": len(texts)}, words)


def mix(p_encoder: np.ndarray, p_linear: np.ndarray, weight: float) -> np.ndarray:
    """(N, K) label probabilities of the mix: the weighted average of the two log-probabilities,
    renormalised. weight 0: `p_encoder` itself."""
    if weight == 0:
        return np.asarray(p_encoder, dtype=np.float64)
    tiny = 1e-12  # a probability the float rounded to 0 still has a finite log
    z = (1 - weight) * np.log(np.maximum(p_encoder, tiny)) + weight * np.log(np.maximum(p_linear, tiny))
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def choose(p_encoder: np.ndarray, p_linear: np.ndarray, gold: Sequence[int],
           grid: Sequence[float] = MIX_GRID) -> dict[str, Any]:
    """The weight on `grid` with the best accuracy on (dev) `gold`; ties go to the lower log-loss.
    Returns the weight and each tried weight's dev accuracy."""
    y = np.asarray(gold)
    tried = {}
    best = None
    for w in grid:
        p = mix(p_encoder, p_linear, w)
        acc = float((p.argmax(1) == y).mean())
        nll = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())
        tried[f"{w:g}"] = round(acc, 4)
        if best is None or (acc, -nll) > best[0]:
            best = ((acc, -nll), w)
    assert best is not None
    return {"weight": best[1], "dev_accuracy": round(best[0][0], 4), "dev_log_loss": round(-best[0][1], 4),
            "dev": tried}


def log_loss(p: np.ndarray, gold: Sequence[int]) -> float:
    y = np.asarray(gold)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)))) if len(y) else math.nan
