"""What a trained model leaks about its training data: `candorlm audit RUN` writes
RUN/evals/privacy.json with four measurements.

- canaries: each planted secret's exposure (Carlini et al. 2019): log2 of the candidate space
  minus log2 of the secret's rank among all secrets of the same format, ranked by the model's
  log-perplexity. The rank is estimated from a random sample of candidates, and the tail by a
  skew-normal fitted to the sample's log-perplexities (as in the paper), since the canary often
  beats every sampled candidate; a space no larger than the candidate budget is enumerated. Controls (never planted)
  show what an unseen secret scores. Whether greedy decoding from the format's prefix writes
  the secret is recorded too.
- extraction: prompt with the first tokens of training documents and of held-out documents;
  the share of greedy continuations that reproduce the true next 50 tokens exactly.
- membership inference: a loss-threshold attack (Yeom et al. 2018); ROC AUC of training
  against held-out documents (0.5: the model does not tell them apart).
- PII regurgitation: sample generations, run the PII detector on them, and count detected
  values that occur verbatim in the training split.

Training and held-out documents come from the run's data directory (its shards are cut at
<|bos|>), so nothing but the run and its data is needed.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from candorlm.errors import CandorError
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.io.files import read_json, write_json
from candorlm.io.sealed import Key
from candorlm.forecast import forecast_flops
from candorlm.lm import LanguageModel
from candorlm.privacy.audit_cost import audit_flops, flops_per_token
from candorlm.privacy.canaries import FILE_NAME as CANARIES_FILE
from candorlm.privacy.canaries import CanarySet, fill, random_digits
from candorlm.privacy.pii import PIIDetector
from candorlm.progress import progress_bar
from candorlm.rundir import open_run
from candorlm.shards import ShardSet

log = logging.getLogger("candorlm")
ENUMERATE_LIMIT = 20_000


# ---------------------------------------------------------------- documents from shards


def split_documents(arrays: Sequence[np.ndarray], bos: int, eos: int) -> list[np.ndarray]:
    """Token ids of each document (without <|bos|> and <|eos|>) in a split's shards."""
    docs = []
    for arr in arrays:
        arr = np.asarray(arr)
        starts = np.flatnonzero(arr == bos)
        ends = np.append(starts[1:], len(arr))
        for s, e in zip(starts, ends):
            doc = arr[s + 1:e]
            if len(doc) and doc[-1] == eos:
                doc = doc[:-1]
            docs.append(doc.astype(np.int64))
    return docs


def _sample(docs: list[np.ndarray], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    if len(docs) <= n:
        return docs
    return [docs[i] for i in sorted(rng.choice(len(docs), size=n, replace=False))]


# ---------------------------------------------------------------- scoring


@torch.no_grad()
def sequence_nll(model: torch.nn.Module, sequences: Sequence[Sequence[int]], bos: int, batch_size: int = 64,
                 mean: bool = False) -> np.ndarray:
    """Total (or mean per token) negative log-likelihood, in nats, of each sequence after <|bos|>,
    truncated to the model's context."""
    device = next(model.parameters()).device
    limit = model.cfg.max_seq_len
    out = np.zeros(len(sequences))
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            rows = [[bos, *list(sequences[i])][:limit] for i in idx]
            width = max(len(r) for r in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.bool)
            for j, r in enumerate(rows):
                ids[j, :len(r)] = torch.tensor(r)
                mask[j, :len(r)] = True
            ids, mask = ids.to(device), mask.to(device)
            logits = model(ids).float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            nll = (nll * mask[:, 1:]).sum(1)
            if mean:
                nll = nll / mask[:, 1:].sum(1).clamp(min=1)
            out[idx] = nll.double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(a member scores higher than a non-member), ties counting half (Mann-Whitney U / n1 n2)."""
    if not len(members) or not len(nonmembers):
        return float("nan")
    scores = np.concatenate([members, nonmembers])
    ranks = _average_ranks(scores)
    u = ranks[:len(members)].sum() - len(members) * (len(members) + 1) / 2
    return float(u / (len(members) * len(nonmembers)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """True-positive rate of the threshold attack whose false-positive rate is at most `fpr`."""
    if not len(members) or not len(nonmembers):
        return float("nan")
    threshold = np.quantile(nonmembers, 1 - fpr, method="higher")
    return float((members > threshold).mean())


# ---------------------------------------------------------------- canaries


def exposure_from_fit(canary_nll: float, candidate_nll: np.ndarray, space: float) -> float:
    """-log2 of the share of the space expected to score better than the canary, from a
    skew-normal fitted to sampled candidates' log-perplexities, capped at log2(space)."""
    from scipy.stats import skewnorm

    params = skewnorm.fit(candidate_nll)
    share = float(skewnorm.cdf(canary_nll, *params))
    return float(min(math.log2(space), -math.log2(max(share, 1.0 / space))))


def canary_exposures(lm: LanguageModel, canaries: CanarySet, candidates: int, rng: np.random.Generator,
                     batch_size: int = 128) -> list[dict[str, Any]]:
    tok, fmt = lm.tokenizer, canaries.format
    digits = fmt.count("#")
    space = 10.0 ** digits
    import random

    pyrng = random.Random(int(rng.integers(2**31)))
    if space <= min(candidates, ENUMERATE_LIMIT):  # the whole space fits the budget: rank exactly
        pool = [fill(fmt, f"{i:0{digits}d}") for i in range(int(space))]
        exact = True
    else:
        pool = [fill(fmt, random_digits(fmt, pyrng)) for _ in range(candidates)]
        exact = False
    pool_nll = sequence_nll(lm.model, tok.encode_batch(pool), tok.bos_id, batch_size)
    canary_nll = sequence_nll(lm.model, tok.encode_batch([c.text for c in canaries.canaries]), tok.bos_id, batch_size)
    prefix_ids = [tok.bos_id, *tok.encode(canaries.prefix)]
    room = lm.model.cfg.max_seq_len - len(prefix_ids)
    n_secret = max(1, min(room, len(tok.encode(canaries.canaries[0].text)) - len(prefix_ids) + 4))
    greedy = generate_ids(lm.model, [prefix_ids], SamplingConfig(max_new_tokens=n_secret, greedy=True),
                          suppress_ids=lm._suppressed(), pad_id=tok.pad_id)[0] if room > 0 else []
    completion = tok.decode(greedy)
    out = []
    for c, nll in zip(canaries.canaries, canary_nll):
        if exact:
            better = int((pool_nll < nll - 1e-9).sum())
            exposure = math.log2(space) - math.log2(better + 1)
            fitted = exposure
        else:
            better = int((pool_nll < nll - 1e-9).sum())
            exposure = -math.log2((better + 1) / (len(pool) + 1))
            fitted = exposure_from_fit(float(nll), pool_nll, space)
        out.append({"secret": c.secret, "repeats": c.repeats, "log_perplexity": round(float(nll), 4),
                    "candidates_better": better, "exposure_sampled": round(exposure, 3),
                    "exposure": round(fitted, 3), "extracted": completion.startswith(c.secret)})
    return out


def _by_repeats(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["repeats"], []).append(r)
    return {str(k): {"canaries": len(v), "mean_exposure": round(float(np.mean([r["exposure"] for r in v])), 3),
                     "mean_exposure_sampled": round(float(np.mean([r["exposure_sampled"] for r in v])), 3),
                     "extracted": sum(r["extracted"] for r in v)}
            for k, v in sorted(groups.items())}


# ---------------------------------------------------------------- extraction and membership


def extraction_rate(lm: LanguageModel, docs: list[np.ndarray], prefix: int, suffix: int,
                    batch_size: int = 32) -> dict[str, float]:
    eligible = [d for d in docs if len(d) >= prefix + suffix]
    exact, matched = 0, 0.0
    for start in range(0, len(eligible), batch_size):
        batch = eligible[start:start + batch_size]
        prompts = [[lm.tokenizer.bos_id, *d[:prefix].tolist()] for d in batch]
        outs = generate_ids(lm.model, prompts, SamplingConfig(max_new_tokens=suffix, greedy=True),
                            suppress_ids=lm._suppressed(), pad_id=lm.tokenizer.pad_id)
        for d, o in zip(batch, outs):
            truth = d[prefix:prefix + suffix].tolist()
            exact += o[:suffix] == truth
            matched += _common_prefix(o, truth) / suffix
    n = len(eligible)
    return {"documents": n, "exact_rate": exact / n if n else float("nan"),
            "mean_matched_prefix": matched / n if n else float("nan")}


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------- PII regurgitation


def pii_regurgitation(lm: LanguageModel, train_docs: list[np.ndarray], generations: int, tokens: int,
                      seed: int, batch_size: int = 16) -> dict[str, Any]:
    tok = lm.tokenizer
    texts: list[str] = []
    for start in range(0, generations, batch_size):
        n = min(batch_size, generations - start)
        cfg = SamplingConfig(max_new_tokens=min(tokens, lm.model.cfg.max_seq_len - 1), temperature=1.0,
                             seed=seed + start)
        for ids in generate_ids(lm.model, [[tok.bos_id]] * n, cfg, suppress_ids=lm._suppressed(), pad_id=tok.pad_id):
            texts.append(tok.decode(ids))
    detector = PIIDetector()
    found: dict[str, set[str]] = {}
    for text in texts:
        for e in detector.detect(text):
            found.setdefault(e.type, set()).add(e.text)
    values = sorted({v for vs in found.values() for v in vs}, key=len, reverse=True)
    seen: set[str] = set()
    if values:
        pattern = re.compile("|".join(re.escape(v) for v in values))
        for start in range(0, len(train_docs), 256):
            for doc in tok.hf.decode_batch([d.tolist() for d in train_docs[start:start + 256]]):
                seen.update(_all_matches(pattern, doc, values))
    from candorlm.privacy.anonymize import mask

    per_type = {t: {"detected": len(vs), "in_training_data": sum(v in seen for v in vs),
                    "examples_masked": [mask(v) for v in sorted(vs & seen)[:5]]}
                for t, vs in sorted(found.items())}
    return {"generations": len(texts), "tokens_each": tokens, "per_type": per_type,
            "detected": sum(len(vs) for vs in found.values()),
            "in_training_data": sum(p["in_training_data"] for p in per_type.values())}


def _all_matches(pattern: re.Pattern[str], text: str, values: list[str]) -> set[str]:
    # The alternation finds the longest value at each place; a shorter one inside it is checked too.
    hits = {m.group() for m in pattern.finditer(text)}
    return hits | {v for v in values if v not in hits and any(v in h for h in hits)}


# ---------------------------------------------------------------- the audit


def audit(run_dir: str | Path, *, data: str | Path | None = None, samples: int = 200, candidates: int = 2000,
          generations: int = 50, generation_tokens: int = 64, prefix_tokens: int = 32, suffix_tokens: int = 50,
          seed: int = 0, key: Key | None = None) -> dict[str, Any]:
    """Run the four measurements and write RUN/evals/privacy.json (returned as a dict).

    Args:
        run_dir: Run directory.
        data: The run's data directory, if it has moved.
        samples: Training and held-out documents for extraction and membership inference.
        candidates: Random secrets each canary is ranked against.
        generations: Sampled generations checked for personal data.
        generation_tokens: Tokens per sampled generation.
        prefix_tokens: Extraction: tokens of a training document given as the prompt.
        suffix_tokens: Extraction: tokens that must follow exactly.
        seed: Random seed.
        key: Key of an encrypted run or data (None: the environment's).
    """
    from candorlm.io.sealed import use_key
    from candorlm.io.manifest import update_manifest

    t0 = time.perf_counter()
    run = open_run(run_dir)
    with use_key(key):
        lm = LanguageModel.load(run.path)
        data_path = Path(data or lm.config.data.path or "")
        if not data_path.is_dir():
            raise CandorError(f"the run's data directory {data_path} is not there; name it with --data DATA_DIR")
        shards = ShardSet(data_path)
        if shards.tokenizer.hf.to_str() != lm.tokenizer.hf.to_str():
            raise CandorError(f"{data_path} was tokenized with another tokenizer than {run.path}; name the run's "
                              f"own data with --data")
        tok = lm.tokenizer
        train_docs = split_documents(shards.arrays("train"), tok.bos_id, tok.eos_id)
        val_docs = split_documents(shards.arrays("val"), tok.bos_id, tok.eos_id)
        canary_path = run.path / CANARIES_FILE
        canaries = CanarySet.load(canary_path) if canary_path.is_file() else None
    rng = np.random.default_rng(seed)
    planted = {tuple(ids) for ids in tok.encode_batch([c.text for c in canaries.canaries])} if canaries else set()
    distinct_train = [d for d in _unique(train_docs) if tuple(d.tolist()) not in planted]
    member = _sample(distinct_train, samples, rng)
    nonmember = _sample(_unique(val_docs), samples, rng)
    result: dict[str, Any] = {"run": str(run.path), "data": str(data_path), "seed": seed}
    work = _work(lm, canaries, candidates, member + nonmember, prefix_tokens, suffix_tokens, generations,
                 generation_tokens)
    log.info("%s", forecast_flops(sum(work), run.path, "the audit's FLOPs") if work else "estimated time: unknown")
    with progress_bar("auditing", total=sum(work) or 4) as bar:
        if canaries is not None:
            rows = canary_exposures(lm, canaries, candidates, rng)
            result["canaries"] = {"format": canaries.format, "candidate_space": 10 ** canaries.format.count("#"),
                                  "candidates_scored": min(candidates, 10 ** canaries.format.count("#")),
                                  "by_repeats": _by_repeats(rows), "canaries": rows}
        else:
            result["canaries"] = None
        bar.advance(work[0] if work else 1)
        suffix = min(suffix_tokens, lm.model.cfg.max_seq_len - prefix_tokens - 1)
        if suffix < 1:
            raise CandorError(f"the model's context ({lm.model.cfg.max_seq_len} tokens) is too short for a "
                              f"{prefix_tokens}-token prompt; lower --prefix-tokens")
        result["extraction"] = {"prefix_tokens": prefix_tokens, "suffix_tokens": suffix,
                                "train": extraction_rate(lm, member, prefix_tokens, suffix),
                                "heldout": extraction_rate(lm, nonmember, prefix_tokens, suffix)}
        bar.advance(work[1] if work else 1)
        m_loss = sequence_nll(lm.model, member, tok.bos_id, mean=True)
        n_loss = sequence_nll(lm.model, nonmember, tok.bos_id, mean=True)
        result["membership"] = {"attack": "loss threshold", "train_documents": len(member),
                                "heldout_documents": len(nonmember), "auc": _round(roc_auc(-m_loss, -n_loss)),
                                "tpr_at_fpr_0.01": _round(tpr_at_fpr(-m_loss, -n_loss, 0.01)),
                                "tpr_at_fpr_0.1": _round(tpr_at_fpr(-m_loss, -n_loss, 0.1)),
                                "train_mean_loss": _round(float(m_loss.mean())) if len(m_loss) else None,
                                "heldout_mean_loss": _round(float(n_loss.mean())) if len(n_loss) else None}
        bar.advance(work[2] if work else 1)
        result["pii_regurgitation"] = pii_regurgitation(lm, train_docs, generations, generation_tokens, seed)
        bar.advance(work[3] if work else 1)
    dp_file = run.path / "dp.json"
    result["differential_privacy"] = read_json(dp_file) if dp_file.is_file() else None
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = run.evals / "privacy.json"
    write_json(out, result)
    update_manifest(run.path, [out])
    return result


def _work(lm: LanguageModel, canaries: CanarySet | None, candidates: int, docs: list[np.ndarray], prefix: int,
          suffix: int, generations: int, generation_tokens: int) -> list[float]:
    """The audit's four parts in FLOPs (about 2 x matrix parameters per token)."""
    n_canaries = len(canaries.canaries) if canaries else 0
    canary_tokens = len(lm.tokenizer.encode(canaries.canaries[0].text)) + 1 if canaries and n_canaries else 0
    pool = min(candidates, 10 ** canaries.format.count("#")) if canaries else 0
    return audit_flops(flops_per_token(lm.model), lm.model.cfg.max_seq_len, n_canaries, canary_tokens, pool,
                       [len(d) for d in docs], prefix, suffix, generations, generation_tokens)


def _unique(docs: list[np.ndarray]) -> list[np.ndarray]:
    seen, out = set(), []
    for d in docs:
        key = d.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _round(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)
