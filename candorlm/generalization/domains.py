"""`candorlm eval RUN --domains ...`: bits-per-byte in and out of the training domain.

In-domain is the run's own validation split (documents recovered from its data directory's
shards, so scrubbed or filtered data is scored as it was held out). Out-of-domain sets are the
other built-in corpora and any files or directories the user names. A built-in corpus the run
was trained on contributes only its validation documents (the same hash rule as `prepare`), so
no training document is ever scored as "held out".

Each set is capped at `max_docs` documents (a seeded sample) of at most `max_chars` characters
(the first ones), which bounds the cost; the report names both caps. The gap per domain is
out-of-domain minus in-domain bits-per-byte, with a bootstrap interval over documents.
Results go to RUN/evals/domains.json.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from candorlm.corpus import BUILTINS, Corpus
from candorlm.errors import CandorError
from candorlm.generalization.bootstrap import LEVEL, RESAMPLES, bpb_interval, gap_interval, paired_gap_interval
from candorlm.generalization.context import context_probe
from candorlm.generalization.probes import perturbations
from candorlm.generalization.scoring import DocScores, score_documents
from candorlm.io.files import write_json
from candorlm.lm import LanguageModel
from candorlm.progress import progress_bar
from candorlm.rundir import open_run
from candorlm.shards import ShardSet, is_validation

log = logging.getLogger("candorlm")

DEFAULT_MAX_DOCS = 200
DEFAULT_MAX_CHARS = 2000


def validation_texts(shards: ShardSet) -> list[str]:
    """The texts of a data directory's validation documents, decoded from its shards."""
    tok = shards.tokenizer
    texts = []
    for arr in shards.arrays("val"):
        arr = np.asarray(arr)
        starts = np.flatnonzero(arr == tok.bos_id)
        for s, e in zip(starts, np.append(starts[1:], len(arr))):
            ids = arr[s + 1:e]
            if len(ids) and ids[-1] == tok.eos_id:
                ids = ids[:-1]
            text = tok.decode(ids.tolist())
            if text.strip():
                texts.append(text)
    return texts


def _sample(texts: list[str], max_docs: int, max_chars: int, seed: int) -> list[str]:
    if max_docs and len(texts) > max_docs:
        keep = sorted(random.Random(seed).sample(range(len(texts)), max_docs))
        texts = [texts[i] for i in keep]
    return [t[:max_chars] if max_chars else t for t in texts]


def domain_texts(spec: str, trained_on: Sequence[str], val_fraction: float) -> tuple[list[str], str]:
    """A held-out set's texts and a note on what they are."""
    if spec.startswith("builtin:") and spec[len("builtin:"):] not in BUILTINS:
        Corpus([spec])  # raises with the valid names
    if not spec.startswith("builtin:") and not Path(spec).exists():
        raise CandorError(f"--domains: {spec} is neither builtin:NAME nor an existing file or directory")
    texts = [d.text for d in Corpus([spec])]
    if spec in trained_on:
        texts = [t for t in texts if is_validation(t, val_fraction)]
        return texts, "validation documents only (the run trained on this corpus)"
    if not texts:
        raise CandorError(f"--domains: {spec} holds no text")
    return texts, "every document (not in the training data)"


def default_domains(trained_on: Sequence[str]) -> list[str]:
    """The built-in corpora the run was not trained on."""
    return [f"builtin:{b}" for b in BUILTINS if f"builtin:{b}" not in trained_on]


def _row(name: str, scores: DocScores, seed: int, vocab_size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, **scores.summary(vocab_size)}
    for key in ("bpb", "loss", "perplexity"):
        row[key] = round(row[key], 4)
    row["ci"] = bpb_interval(scores, seed=seed)
    return row


def evaluate_domains(run: str | Path, domains: Sequence[str] = (), *, data: str | Path | None = None,
                     max_docs: int = DEFAULT_MAX_DOCS, max_chars: int = DEFAULT_MAX_CHARS, probes: bool = True,
                     context: bool = True, batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Score the run in-domain, on each domain, and under the robustness probes; write and return
    RUN/evals/domains.json. With no `domains`, the built-in corpora the run was not trained on.

    Args:
        run: Run directory of a language model.
        domains: Held-out sets: builtin:NAME, files or directories.
        data: The run's data directory, if it has moved.
        max_docs: Documents per set (a seeded sample; 0: all).
        max_chars: Characters per document (the first ones; 0: all).
        probes: Also the robustness probes (traditional characters, punctuation width, character
            noise).
        context: Also score longer contexts than the run trained on.
        batch_size: Documents scored together.
        seed: Seed of the samples, the noise and the bootstrap.
    """
    from candorlm.io.sealedtree import refuse_plain_output_in_sealed_tree

    refuse_plain_output_in_sealed_tree(run, "evals/domains.json")
    t0 = time.perf_counter()
    rd = open_run(run)
    lm = LanguageModel.load(rd.path)
    model, tok = lm.model, lm.tokenizer
    data_path = Path(data or lm.config.data.path or "")
    if not (data_path / "meta.json").is_file():
        raise CandorError(f"the run's data directory '{data_path}' is not there; name it with --data DATA_DIR "
                          f"(the in-domain set is its validation split)")
    shards = ShardSet(data_path)
    if shards.tokenizer.hf.to_str() != tok.hf.to_str():
        raise CandorError(f"{data_path} was tokenized with another tokenizer than {rd.path}; name the run's own "
                          f"data with --data")
    trained_on = list(shards.meta.sources)
    domains = list(domains) or default_domains(trained_on)
    in_texts = _sample(validation_texts(shards), max_docs, max_chars, seed)
    if not in_texts:
        raise CandorError(f"{data_path} has no validation documents to score in-domain")
    sets = [(spec, *domain_texts(spec, trained_on, shards.meta.val_fraction)) for spec in domains]
    probe_fns = perturbations(in_texts, seed=seed) if probes else {}
    train_len = lm.config.seq_len
    score = lambda texts: score_documents(model, tok, texts, context=train_len, batch_size=batch_size)  # noqa: E731
    with progress_bar("scoring domains", total=1 + len(sets) + len(probe_fns) + int(context)) as bar:
        clean = score(in_texts)
        in_row = _row("in-domain", clean, seed, tok.vocab_size)
        in_row.update(source=str(data_path), note=f"validation split of {', '.join(trained_on)}")
        bar.advance()
        rows = []
        for spec, texts, note in sets:
            texts = _sample(texts, max_docs, max_chars, seed)
            if not texts:
                rows.append({"name": spec, "note": f"{note}: none left to score"})
                bar.advance()
                continue
            scores = score(texts)
            row = _row(spec, scores, seed, tok.vocab_size)
            row["note"] = note
            row["gap"] = round(row["bpb"] - in_row["bpb"], 4)
            row["gap_ci"] = gap_interval(scores, clean, seed=seed)
            rows.append(row)
            bar.advance()
        probe_rows = []
        for name, (description, fn) in probe_fns.items():
            if fn is None:
                probe_rows.append({"name": name, "description": description})
                bar.advance()
                continue
            perturbed_texts = [fn(t) for t in in_texts]
            changed = sum(a != b for a, b in zip(perturbed_texts, in_texts))
            scores = score(perturbed_texts)
            row = _row(name, scores, seed, tok.vocab_size)
            row.update(description=description, documents_changed=changed,
                       delta=round(row["bpb"] - in_row["bpb"], 4), delta_ci=paired_gap_interval(scores, clean, seed=seed))
            probe_rows.append(row)
            bar.advance()
        context_rows = context_probe(model, tok, in_texts, train_len, seed=seed) if context else []
        if context:
            bar.advance()
    result = {
        "run": str(rd.path), "data": str(data_path), "trained_on": trained_on,
        "model": {"parameters": model.num_params(), "train_seq_len": train_len, "tokenizer": tok.kind},
        "settings": {"max_docs": max_docs, "max_chars": max_chars, "bootstrap_resamples": RESAMPLES,
                     "confidence": LEVEL, "seed": seed, "window": train_len},
        "in_domain": in_row, "domains": rows, "probes": probe_rows, "context": context_rows,
        "command": " ".join(["candorlm eval", str(rd.path), "--domains", *domains]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    rd.evals.mkdir(parents=True, exist_ok=True)
    write_json(rd.evals / "domains.json", result)
    return result
