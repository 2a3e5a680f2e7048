"""A fine-tuned sentiment run mixed with NB-LR on character n-grams (candorlm/tasks/nblr.py): each
setting's dev and test accuracy, the NB-LR alone, the run alone and TF-IDF + LR beside them.

Everything is chosen on the dev split: the NB-LR is fitted on the training split only (the split
the run was trained on), the mixing weight picked on dev (tasks.nblr.choose), and the setting to
use is the one with the best dev accuracy of the mix. The test column of every setting is printed
so that the choice can be checked, not to choose by it.

    taskset -c 1 nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/sentiment_nblr.py runs/sent-mlm6 \
        --out runs/nblr-sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from candorlm.beam import right_pad
from candorlm.tasks import nblr
from candorlm.tasks.base import load_task_run
from candorlm.tasks.data import split_records
from candorlm.tasks.sentiment import encode, load_records


@torch.no_grad()
def encoder_probs(model, tok, texts, max_len):
    rows = [encode(tok, t, max_len) for t in texts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = np.zeros((len(rows), 2))
    for s in range(0, len(order), 128):
        idx = order[s:s + 128]
        ids, mask = right_pad([rows[i] for i in idx], tok.pad_id)
        out[idx] = model(ids, mask).float().softmax(-1).numpy()
    return out


def tfidf(train_x, train_y, test_x):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train_x), train_y)
    return clf.predict(vec.transform(test_x))


def acc(p, y):
    pred = np.asarray(p).argmax(1) if np.ndim(p) == 2 else np.asarray(p)
    return round(float((pred == y).mean()), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ngrams", default="1-3,1-4,1-5")
    ap.add_argument("--c", default="0.1,0.3,1,3,10")
    ap.add_argument("--min-df", default="1,2")
    ap.add_argument("--words", default="0", help="word n-gram orders to try (0: characters only)")
    ap.add_argument("--also", action="append", default=[],
                    help="another fine-tuned run of the same data: the encoders' log-odds averaged, equal weights")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rd, _, info, model, tok, _ = load_task_run(args.run)
    records, labels = load_records(info["data"], info["labels"])
    index = {lab: i for i, lab in enumerate(labels)}
    splits = split_records(records, key="text")
    text = {k: [r["text"] for r in v] for k, v in splits.items()}
    gold = {k: np.array([index[r["label"]] for r in v]) for k, v in splits.items()}
    t0 = time.process_time()
    enc = {k: encoder_probs(model, tok, text[k], info["max_len"]) for k in ("dev", "test")}
    alone = {}
    for i, other in enumerate(args.also, 2):  # the mean of n encoders' log-probabilities, renormalised
        _, _, o_info, o_model, o_tok, _ = load_task_run(other)
        more = {k: encoder_probs(o_model, o_tok, text[k], o_info["max_len"]) for k in ("dev", "test")}
        alone[other] = {k: acc(more[k], gold[k]) for k in more}
        enc = {k: nblr.mix(enc[k], more[k], 1 / i) for k in enc}
    result = {"run": str(rd.path), "encoder_cpu_s": round(time.process_time() - t0, 1),
              "encoder": {k: acc(enc[k], gold[k]) for k in enc}, "also": alone,
              "tfidf": {"dev (fit on train)": acc(tfidf(text["train"], gold["train"], text["dev"]), gold["dev"]),
                        "test (fit on train+dev)": acc(tfidf(text["train"] + text["dev"],
                                                             np.concatenate([gold["train"], gold["dev"]]),
                                                             text["test"]), gold["test"])},
              "settings": []}
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}), flush=True)
    combos = [(ng, words) for ng in args.ngrams.split(",") for words in (int(x) for x in args.words.split(","))]
    for ng, words in combos:
        lo, hi = (int(x) for x in ng.split("-"))
        for min_df in (int(x) for x in args.min_df.split(",")):
            for c in (float(x) for x in args.c.split(",")):
                t0 = time.process_time()
                m = nblr.fit(text["train"], gold["train"], len(labels), (lo, hi), c, min_df, words)
                fit_s = time.process_time() - t0
                lin = {k: m.probabilities(text[k]) for k in ("dev", "test")}
                chosen = nblr.choose(enc["dev"], lin["dev"], gold["dev"])
                w = chosen["weight"]
                row = {"ngrams": ng, "words": words, "min_df": min_df, "C": c, "features": len(m.vocabulary),
                       "fit_cpu_s": round(fit_s, 1),
                       "nblr_dev": acc(lin["dev"], gold["dev"]), "nblr_test": acc(lin["test"], gold["test"]),
                       "weight": w, "mix_dev": chosen["dev_accuracy"],
                       "mix_test": acc(nblr.mix(enc["test"], lin["test"], w), gold["test"]),
                       "mix_test_at": {f"{x:g}": acc(nblr.mix(enc["test"], lin["test"], x), gold["test"])
                                       for x in (0.3, 0.4, 0.5, 0.6, 0.7)},
                       "dev_curve": chosen["dev"]}
                # the probability average, for comparison with the log-odds mix
                pw = max(nblr.MIX_GRID,
                         key=lambda x: (acc((1 - x) * enc["dev"] + x * lin["dev"], gold["dev"]), -abs(x - 0.5)))
                row["prob_avg_weight"] = pw
                row["prob_avg_dev"] = acc((1 - pw) * enc["dev"] + pw * lin["dev"], gold["dev"])
                row["prob_avg_test"] = acc((1 - pw) * enc["test"] + pw * lin["test"], gold["test"])
                result["settings"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "dev_curve"}), flush=True)
    best = max(result["settings"], key=lambda r: (r["mix_dev"], r["nblr_dev"]))
    result["chosen_on_dev"] = best
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("chosen on dev:", json.dumps({k: v for k, v in best.items() if k != "dev_curve"}))


if __name__ == "__main__":
    main()
