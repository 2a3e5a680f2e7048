"""A character n-gram LM fused into the pinyin tagger's decoding (shallow fusion), as input
methods use one: the tagger proposes each position's best few candidates from the dictionary,
and a beam search over the sentence picks the characters that maximise

    sum_i  log p_tagger(c_i | source)  +  weight * log p_lm(c_i | c_{i-2} c_{i-1})  +  channel * log p(s_i | c_i)
                                                                      (+ weight * log p_lm(<eos> | ...))

where p(s_i | c_i) is the dictionary's channel probability: how often character c_i was written with
syllable s_i in the training split (smoothed). The tagger's posterior already reads the syllables,
but it is a small model's guess; the channel term adds what the counts know about rare readings.

The LM (candorlm.tasks.ngram: interpolated Kneser-Ney, order 3 by default) is counted on the
training split's targets only. `weight`, `channel` and the beam width are chosen on the dev split
when the fine-tuning ends and stored in task.json's "lm" entry (the channel's counts with them); the
model itself is `ngram.safetensors` in the run. weight 0 (or no "lm" entry: a run from before) is plain tagging, one argmax per position.

The same search with the dictionary's channel probability log p(syllable | character) in place of
the tagger, weight 1, is an HMM input method: the LM and dictionary alone, a baseline of its own.

A run fine-tuned without an LM gets one afterwards with `attach_lm` (candorlm.tasks.translate):
the LM is counted, the weight chosen on dev with the run's tagger, and the run's manifest updated.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from candorlm.errors import CandorError
from candorlm.tasks.data import Record
from candorlm.tasks.ngram import NgramLM
from candorlm.tasks.translate_metrics import scores
from candorlm.tasks.translate_tag import candidates, scored_pieces, tag
from candorlm.tokenizer import Tokenizer

log = logging.getLogger("candorlm")

LM_FILE = "ngram.safetensors"
ORDER = 3
CANDIDATES = 16  # the tagger's best few per position (a weak tagger's top-8 missed the reference too often)
WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # LM weights tried on dev, at the first of BEAMS
# Beam widths: the first to choose the weight, the others tried at that weight. On the lead's 26-minute
# tagger (dev, weight 1.5): beam 4 0.9115, 8 0.9181, 16 0.9206, 32 0.9211, 64 0.9213; weight 2: 32 0.9227.
BEAMS = (16, 32)
# Channel-term weights tried on dev with each LM weight. On the lead's 26-minute tagger (dev, beam 16,
# best LM weight for each): 0 0.9271, 0.5 0.9276, 1 0.9280, 1.5 0.9282, 2 0.9281; test at beam 32
# 0.9294 (channel 0) -> 0.9305 (channel 1). 0.5 and 1.5 are within 0.0004 of 1: not worth their decodes.
CHANNELS = (0.0, 1.0)
CHANNEL_SMOOTHING = 0.1  # added to a (syllable, character) count: a reading never seen is unlikely, not impossible
HMM_CANDIDATES, HMM_BEAM = 32, 16  # the HMM baseline's search: on dev, k16 beam 4 0.874, k32 beam 16 0.914, k64 beam 16 0.914
DEAD = -1e9  # the score of a missing candidate (a position with fewer than K)


@dataclass
class Lattice:
    """Each source's candidates per position: LM ids (target classes) and scores, (N, T, K); the
    positions whose output is fixed text (a copied source token) in `fixed`."""

    ids: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray
    fixed: dict[tuple[int, int], str] = field(default_factory=dict)

    def texts(self, choices: Sequence[np.ndarray], tgt: Tokenizer) -> list[str]:
        out = []
        for n, pick in enumerate(choices):
            chars = [self.fixed.get((n, t)) for t in range(len(pick))]
            out.append("".join(c if c is not None else tgt.hf.id_to_token(int(self.ids[n, t, k]))
                               for t, (k, c) in enumerate(zip(pick, chars))))
        return out


def build_lm(records: Sequence[Record], tgt: Tokenizer, order: int = ORDER) -> NgramLM:
    """The LM of the training split's targets, over the target vocabulary's ids."""
    unk = tgt.unk_id
    sentences = [[tgt.hf.token_to_id(ch) or unk for ch in r["target"]] for r in records]
    return NgramLM.build(sentences, order=order, vocab_size=tgt.vocab_size, bos=tgt.bos_id, eos=tgt.eos_id)


# ---------------------------------------------------------------- lattices


@torch.no_grad()
def tagger_lattice(model: nn.Module, src: Tokenizer, tgt: Tokenizer, sources: Sequence[str], lexicon: dict[str, str],
                   k: int = CANDIDATES, batch_size: int = 128) -> Lattice:
    """The tagger's k best candidates per position (log-softmax over the dictionary's candidates),
    a text longer than the model reads tagged in pieces and joined, as translate_tag.tag does."""
    tokens = [text.split() for text in sources]
    T = max((len(t) for t in tokens), default=0)
    k = min(k, tgt.vocab_size)
    lat = Lattice(np.zeros((len(sources), T, k), dtype=np.int64), np.full((len(sources), T, k), DEAD),
                  np.array([len(t) for t in tokens], dtype=np.int64))
    for pieces, rows, logits in scored_pieces(model, src, sources, candidates(lexicon, src, tgt), batch_size):
        top = logits.float().log_softmax(-1).topk(k, dim=-1)
        values, classes = top.values.cpu().numpy(), top.indices.cpu().numpy()
        for (i, at, toks), row, v, c in zip(pieces, rows, values, classes):
            n = len(toks)
            lat.ids[i, at:at + n] = c[1:n + 1]
            lat.scores[i, at:at + n] = np.where(v[1:n + 1] < -1e3, DEAD, v[1:n + 1])  # outside the candidates
            for t, (token, tid) in enumerate(zip(toks, row[1:-1])):
                if tid == src.unk_id and len(token) == 1:  # an unseen character: copied, as tag() does
                    _fix(lat, i, at + t, tgt.hf.token_to_id(token) or tgt.unk_id, token)
    return lat


def channel_counts(train: Iterable[Record]) -> dict[str, dict[str, int]]:
    """How often each source token (syllable) stood for each character in `train`: token -> char -> n."""
    pair: dict[str, Counter[str]] = defaultdict(Counter)
    for r in train:
        for token, ch in zip(r["source"].split(), r["target"]):
            pair[token][ch] += 1
    return {token: dict(chars.most_common()) for token, chars in sorted(pair.items())}


def _per_char(counts: dict[str, dict[str, int]]) -> Counter[str]:
    per_char: Counter[str] = Counter()
    for chars in counts.values():
        per_char.update(chars)
    return per_char


class Channel:
    """log p(syllable | character) over the target classes, from a run's (syllable, character) counts,
    smoothed: (n + 0.1) / (count(character) + 1). Built once per loaded run (predict and serve keep it
    beside the LM), since building it looks up every counted character in the tokenizer."""

    def __init__(self, counts: dict[str, dict[str, int]], tgt: Tokenizer):
        per_char = _per_char(counts)
        # a reading never seen: log(0.1 / (count(c) + 1)); one vector over the classes
        self.unseen = np.full(tgt.vocab_size, np.log(CHANNEL_SMOOTHING))
        for ch, n in per_char.items():
            cid = tgt.hf.token_to_id(ch)
            if cid is not None:
                self.unseen[cid] -= np.log(n + 1.0)
        self.seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # token -> its characters' ids (sorted), log p
        for token, chars in counts.items():
            pairs = sorted((cid, np.log((n + CHANNEL_SMOOTHING) / (per_char[ch] + 1.0)))
                           for ch, n in chars.items() if (cid := tgt.hf.token_to_id(ch)) is not None)
            pairs = pairs or [(-1, 0.0)]  # none of its characters is a class: every candidate an unseen reading
            self.seen[token] = (np.array([c for c, _ in pairs], dtype=np.int64), np.array([v for _, v in pairs]))

    def scores(self, lat: Lattice, sources: Sequence[str]) -> np.ndarray:
        """The term for each candidate in `lat` (N, T, K). 0 where the lattice has no choice (a copied
        or missing token) and for a token the counts never saw (no evidence either way)."""
        out = np.zeros(lat.scores.shape)
        for i, text in enumerate(sources):
            for t, token in enumerate(text.split()[:lat.ids.shape[1]]):
                if (i, t) in lat.fixed or token not in self.seen:
                    continue
                ids, logp = self.seen[token]
                cand = lat.ids[i, t]
                at = np.minimum(np.searchsorted(ids, cand), len(ids) - 1)
                out[i, t] = np.where(ids[at] == cand, logp[at], self.unseen[cand])
        return np.where(lat.scores <= DEAD / 2, 0.0, out)


def channel_scores(lat: Lattice, sources: Sequence[str], counts: dict[str, dict[str, int]], tgt: Tokenizer) -> np.ndarray:
    """Channel(counts, tgt).scores(lat, sources), for one lattice."""
    return Channel(counts, tgt).scores(lat, sources)


def with_channel(lat: Lattice, channel: np.ndarray, mu: float) -> Lattice:
    """`lat` with mu * the channel term added to its live candidates' scores."""
    if not mu:
        return lat
    return Lattice(lat.ids, np.where(lat.scores <= DEAD / 2, lat.scores, lat.scores + mu * channel), lat.lengths, lat.fixed)


def channel_lattice(train: Sequence[Record], tgt: Tokenizer, sources: Sequence[str], k: int = HMM_CANDIDATES) -> Lattice:
    """The HMM's candidates: for each syllable the k characters it most often stood for in the
    training split, scored log p(syllable | character); an unseen one-character token is copied,
    an unseen longer one gives nothing (as the most-frequent-character baseline)."""
    pair = channel_counts(train)
    per_char = _per_char(pair)
    tokens = [text.split() for text in sources]
    T = max((len(t) for t in tokens), default=0)
    lat = Lattice(np.zeros((len(sources), T, k), dtype=np.int64), np.full((len(sources), T, k), DEAD),
                  np.array([len(t) for t in tokens], dtype=np.int64))
    table: dict[str, tuple[list[int], list[float]]] = {}
    for token, chars in pair.items():
        best = list(chars.items())[:k]  # most frequent first
        table[token] = ([tgt.hf.token_to_id(ch) or tgt.unk_id for ch, _ in best],
                        [float(np.log(c / per_char[ch])) for ch, c in best])
    for i, toks in enumerate(tokens):
        for t, token in enumerate(toks):
            if token in table:
                ids, scores = table[token]
                lat.ids[i, t, :len(ids)], lat.scores[i, t, :len(ids)] = ids, scores
            else:
                _fix(lat, i, t, tgt.hf.token_to_id(token) or tgt.unk_id, token if len(token) == 1 else "")
    return lat


def _fix(lat: Lattice, i: int, t: int, lm_id: int, text: str) -> None:
    """Position t of source i outputs `text`, read by the LM as lm_id."""
    lat.ids[i, t] = lm_id
    lat.scores[i, t] = DEAD
    lat.scores[i, t, 0] = 0.0
    lat.fixed[(i, t)] = text


# ---------------------------------------------------------------- search


def beam_decode(lat: Lattice, lm: NgramLM | None, weight: float, beam: int = 4) -> list[np.ndarray]:
    """The candidate index chosen at each position of each source: a beam search over the lattice
    scoring candidate score + weight * LM log-probability (the LM's <eos> included at the end).
    All sources advance together, position by position (numpy over sources x beams x candidates)."""
    N, T, K = lat.ids.shape
    if lm is None:  # no LM: each position's best candidate
        return [lat.scores[n, :lat.lengths[n]].argmax(-1) for n in range(N)]
    order = np.argsort(-lat.lengths, kind="stable")  # longest first: the live rows at step t are a prefix
    lengths = lat.lengths[order]
    H = lm.order - 1
    score = np.full((N, beam), DEAD)
    score[:, 0] = 0.0
    hist = np.full((N, beam, H), lm.bos, dtype=np.int64)
    back = np.zeros((T, N, beam), dtype=np.int64)
    pick = np.zeros((T, N, beam), dtype=np.int64)
    rows_b = np.arange(beam)
    for t in range(T):
        live = int(np.sum(lengths > t))
        ids, cand = lat.ids[order[:live], t], lat.scores[order[:live], t]  # (live, K)
        lmlp = lm.grid(hist[:live], ids)
        total = (score[:live, :, None] + cand[:, None, :] + weight * lmlp).reshape(live, beam * K)
        if H:  # hypotheses that end alike score alike from here on: keep the best of each (recombination)
            state = np.broadcast_to(ids[:, None, :], (live, beam, K)).copy()
            for j in range(1, H):  # the new state: the last H-1 ids of the history, then the candidate
                state += hist[:live, :, H - j, None] * lm.vocab_size ** j
            total = _recombined(total, state.reshape(live, beam * K))
        top = np.argsort(-total, axis=1, kind="stable")[:, :beam]
        b, c = top // K, top % K
        score[:live] = np.take_along_axis(total, top, axis=1)
        new = np.take_along_axis(ids, c, axis=1)[:, :, None]
        if H:
            prev = np.take_along_axis(hist[:live], b[:, :, None], axis=1)
            hist[:live] = np.concatenate([prev[:, :, 1:], new], axis=2)
        back[t, :live], pick[t, :live] = b, c
        back[t, live:] = rows_b  # finished rows: each beam comes from itself
    score = score + weight * lm.logprob(hist, np.full((N, beam), lm.eos))
    best = score.argmax(1)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * N
    for r, n in enumerate(order):
        k, path = best[r], np.zeros(lengths[r], dtype=np.int64)
        for t in range(T - 1, -1, -1):
            if t < lengths[r]:
                path[t] = pick[t, r, k]
            k = back[t, r, k]
        out[n] = path
    return out


def _recombined(total: np.ndarray, state: np.ndarray) -> np.ndarray:
    """`total` with every entry but the best of its row's equal `state`s set DEAD. (With a trigram,
    a hypothesis's future depends on its last two ids only: a beam of 4 copies of one state would
    be a beam of 1.)"""
    by_score = np.argsort(-total, axis=1, kind="stable")
    keys = np.take_along_axis(state, by_score, axis=1)
    by_key = np.argsort(keys, axis=1, kind="stable")  # equal states together, best score first
    sorted_keys = np.take_along_axis(keys, by_key, axis=1)
    repeat = np.zeros_like(sorted_keys, dtype=bool)
    repeat[:, 1:] = sorted_keys[:, 1:] == sorted_keys[:, :-1]
    dead = np.zeros_like(repeat)
    np.put_along_axis(dead, np.take_along_axis(by_score, by_key, axis=1), repeat, axis=1)
    return np.where(dead, DEAD, total)


def decode(lat: Lattice, tgt: Tokenizer, lm: NgramLM | None, weight: float, beam: int = 4) -> list[str]:
    return lat.texts(beam_decode(lat, lm, weight, beam), tgt)


def tag_with_lm(model: nn.Module, src: Tokenizer, tgt: Tokenizer, sources: Sequence[str], info: dict[str, Any],
                lm: NgramLM | None, channel: Channel | None = None) -> list[str]:
    """What a tagger run outputs (predict, serve): fused with its LM at the weight and beam of task.json's
    "lm"; a run without one (or weight 0) tags as translate_tag.tag. `channel`: the run's Channel, when
    the caller keeps one (built from task.json's counts otherwise)."""
    entry = info.get("lm") or {}
    weight = float(entry.get("weight", 0.0))
    if lm is None or not weight:
        return tag(model, src, tgt, sources, info["lexicon"])
    lat = fused_lattice(tagger_lattice(model, src, tgt, sources, info["lexicon"]), sources, entry, tgt, channel)
    return decode(lat, tgt, lm, weight, int(entry["beam"]))


def fused_lattice(lat: Lattice, sources: Sequence[str], entry: dict[str, Any], tgt: Tokenizer,
                  channel: Channel | None = None) -> Lattice:
    """The tagger's lattice with the channel term of the "lm" entry added (a run from before the
    channel term, or channel 0: the lattice as it is)."""
    mu = float(entry.get("channel", 0.0))
    if not mu:
        return lat
    return with_channel(lat, (channel or Channel(entry["channel_counts"], tgt)).scores(lat, sources), mu)


def run_channel(info: dict[str, Any], tgt: Tokenizer) -> Channel | None:
    """The Channel a loaded tagger run decodes with (None: its "lm" entry has no channel term)."""
    entry = info.get("lm") or {}
    return Channel(entry["channel_counts"], tgt) if entry.get("channel") else None


def choose(lat: Lattice, refs: Sequence[str], tgt: Tokenizer, lm: NgramLM,
           score: Callable[[Sequence[str], Sequence[str]], float], channel: np.ndarray | None = None) -> dict[str, Any]:
    """The LM weight and channel weight together (at beam 16), then the beam width (16 or 32, at
    those weights) that score best on `refs`; ties go to the smaller weights. Weights are compared
    at a wide beam: at beam 4 a narrow search favoured a lower weight (1.5 where beam 16 and 32
    favour 2; the lead's 26-minute tagger, dev). `channel`: channel_scores of `lat` (None: not tried)."""
    def fused(w: float, mu: float, beam: int) -> float:
        lattice = with_channel(lat, channel, mu) if channel is not None else lat
        return score(decode(lattice, tgt, lm, w, beam), refs)

    def name(w: float, mu: float, beam: int) -> str:
        return f"weight {w:g}, beam {beam}" + (f", channel {mu:g}" if mu else "")

    tried = {"weight 0": score(decode(lat, tgt, None, 0.0), refs)}  # the tagger alone: no search
    pairs = [(w, mu) for w in WEIGHTS[1:] for mu in (CHANNELS if channel is not None else (0.0,))]
    for w, mu in pairs:
        tried[name(w, mu, BEAMS[0])] = fused(w, mu, BEAMS[0])
    weight, mu = max(pairs, key=lambda p: (tried[name(*p, BEAMS[0])], -p[0], -p[1]))
    beams = {BEAMS[0]: tried[name(weight, mu, BEAMS[0])]}
    for b in BEAMS[1:]:
        beams[b] = tried[name(weight, mu, b)] = fused(weight, mu, b)
    beam = max(sorted(beams), key=lambda b: (beams[b], -b))
    if tried["weight 0"] >= beams[beam]:  # the LM does not help this tagger on dev: plain tagging
        weight, mu, beam, beams[beam] = 0.0, 0.0, 1, tried["weight 0"]
    return {"weight": weight, "channel": mu, "beam": beam, "dev_char_accuracy": round(beams[beam], 4),
            "dev_tagger_alone": round(tried["weight 0"], 4), "dev": {k: round(v, 4) for k, v in tried.items()}}


def fit(model: nn.Module, src: Tokenizer, tgt: Tokenizer, lexicon: dict[str, str], train: Sequence[Record],
        dev: Sequence[Record], out: Path, score: Callable[[Sequence[str], Sequence[str]], float],
        order: int = ORDER) -> dict[str, Any]:
    """Count the LM on `train`, write it to out/ngram.safetensors, choose the weight and beam on
    `dev` with `model`; returns task.json's "lm" entry."""
    start = time.perf_counter()
    lm = build_lm(train, tgt, order)
    lm.save(out / LM_FILE)
    sources = [r["source"] for r in dev]
    lat = tagger_lattice(model, src, tgt, sources, lexicon)
    counts = channel_counts(train)
    chosen = choose(lat, [r["target"] for r in dev], tgt, lm, score, channel_scores(lat, sources, counts, tgt))
    entry = {"file": LM_FILE, "order": order, "kind": "interpolated Kneser-Ney (modified discounts), characters",
             "counted_on": f"the training split's targets ({len(train)} sentences)", "candidates": CANDIDATES,
             "bytes": (out / LM_FILE).stat().st_size, **chosen, "seconds": round(time.perf_counter() - start, 1)}
    if chosen["channel"]:
        entry["channel_counts"] = counts  # the channel term's p(syllable | character), for predict and eval
    log.info("n-gram LM (order %d, %.1f MB): dev char accuracy %.4f fused (weight %g, channel %g, beam %d), "
             "%.4f tagger alone", order, entry["bytes"] / 1e6, chosen["dev_char_accuracy"], chosen["weight"],
             chosen["channel"], chosen["beam"], chosen["dev_tagger_alone"])
    return entry


# ---------------------------------------------------------------- loading


def load_lm(run: Path, info: dict[str, Any], verify: bool = True) -> NgramLM | None:
    """The run's LM (None: a run without one); a missing, damaged or unlisted file is a CandorError."""
    entry = info.get("lm")
    if not entry:
        return None
    if entry.get("channel") and not isinstance(entry.get("channel_counts"), dict):
        raise CandorError(f"{Path(run) / 'task.json'}: its \"lm\" entry has a channel weight but no channel counts; "
                          f"rebuild it with candorlm.tasks.translate.attach_lm('{run}')")
    path = Path(run) / str(entry.get("file", LM_FILE))
    if not path.is_file():
        raise CandorError(f"{path} is missing; task.json's \"lm\" names it. Rebuild it with "
                          f"candorlm.tasks.translate.attach_lm('{run}'), or remove the \"lm\" entry to tag without it")
    from candorlm.io.manifest import MANIFEST_NAME, check_files
    from candorlm.io.sealed import is_encrypted, read_bytes

    data = None
    if is_encrypted(path):
        data = read_bytes(path)  # authenticated decryption
    elif verify and (Path(run) / MANIFEST_NAME).is_file():
        check_files(Path(run), [path], what="run")
    lm = NgramLM.load(path, data)
    if lm.vocab_size != int(info.get("tags", lm.vocab_size)):
        raise CandorError(f"{path} scores {lm.vocab_size} ids but the run's tagger has {info.get('tags')} classes; "
                          f"it belongs to another run")
    return lm


# ---------------------------------------------------------------- evaluation


def evaluate_tagger(path: Path, info: dict[str, Any], model: nn.Module, src: Tokenizer, tgt: Tokenizer,
                    splits: dict[str, list[Record]], test: Sequence[Record], most_frequent: dict[str, Any]
                    ) -> dict[str, Any]:
    """A tagger run's test scores: its decoding (fused with the run's LM when it has one), the
    tagger alone, the LM + dictionary alone (an HMM input method; a run without an LM gets one
    counted now, the same way) and `most_frequent` (the most frequent character per syllable)."""
    refs, sources = [r["target"] for r in test], [r["source"] for r in test]
    lm = load_lm(path, info)
    entry = info.get("lm") or {}
    lat = tagger_lattice(model, src, tgt, sources, info["lexicon"])
    alone = decode(lat, tgt, None, 0.0)
    weight, beam = float(entry.get("weight", 0.0)), int(entry.get("beam", 1))
    hmm_lm = lm or build_lm(splits["train"], tgt)
    hmm = decode(channel_lattice(splits["train"], tgt, sources), tgt, hmm_lm, 1.0, HMM_BEAM)
    row = {"run": str(path), "arch": "encoder", "head": "tag", "init": info.get("init"),
           "parameters": sum(p.numel() for p in model.parameters())}
    models = [{**row, "name": f"{path.name} (tagger alone)", "decoding": "tagging: each position's best candidate",
               **scores(alone, refs)}]
    hyps = alone
    if lm is not None and weight:
        hyps = decode(fused_lattice(lat, sources, entry, tgt), tgt, lm, weight, beam)
        channel = float(entry.get("channel", 0.0))
        models.insert(0, {**row, "name": f"{path.name} (tagger + n-gram LM)", "decoding":
                          f"tagger + {lm.order}-gram LM, weight {weight:g}"
                          + (f" + channel log p(syllable | character), weight {channel:g}" if channel else "")
                          + f", beam {beam} (chosen on dev)", **scores(hyps, refs)})
    return {
        "task": "translate",
        "split": {"train": len(splits["train"]), "dev": len(splits["dev"]), "test": len(test)},
        "model": models[0], "models": models, "baseline": most_frequent,
        "baselines": {"most_frequent": most_frequent,
                      "hmm": {"name": f"LM + dictionary alone (an HMM input method, {hmm_lm.order}-gram)",
                              "decoding": f"log p(syllable | character) + log p_lm, {HMM_CANDIDATES} candidates, "
                                          f"beam {HMM_BEAM}", **scores(hmm, refs)}},
        "examples": [{"source": s, "reference": r, "output": h} for s, r, h in zip(sources[:5], refs, hyps)],
    }
