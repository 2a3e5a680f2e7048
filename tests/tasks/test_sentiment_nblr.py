"""Sentiment's NB-LR ensemble (candorlm/tasks/nblr.py): the NB features, the stored model, the mix
with the classifier, and a run fine-tuned with --ensemble nblr used by eval and predict."""

import json

import numpy as np
import pytest

from candorlm.corpus import review_records
from candorlm.errors import CandorError
from candorlm.tasks import finetune, nblr
from candorlm.tasks.predict import load_task

FAST = dict(epochs=1, batch_size=16, threads=1, precision="fp32")
TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=96"]
TOY = [("好用，很好", 1), ("很好，喜欢", 1), ("好看又好用", 1), ("太差了", 0), ("差，不喜欢", 0), ("质量差，退货", 0)]


@pytest.fixture(scope="module")
def reviews():
    rows = review_records()[::40]  # the positive reviews come first: shuffle them in, the same way each time
    return [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]


def test_nb_ratios_on_a_toy_set_separate_the_classes():
    from sklearn.feature_extraction.text import CountVectorizer

    texts, labels = [t for t, _ in TOY], np.array([y for _, y in TOY])
    vec = CountVectorizer(analyzer=lambda t: nblr.ngrams(t, 1, 1), binary=True)
    x = vec.fit_transform(texts)
    r = nblr.nb_ratio(x, labels == 1)
    at = vec.vocabulary_
    assert r[at["好"]] > 0 > r[at["差"]]  # each class's own characters point its way
    assert abs(r[at["，"]]) < r[at["好"]]  # a character of both classes says little
    model = nblr.fit(texts, labels, 2, min_df=1)
    p = model.probabilities(texts + ["好", "差"])
    assert (p.argmax(1) == [*labels, 1, 0]).all()
    with pytest.raises(CandorError, match="both classes"):
        nblr.nb_ratio(x, np.ones(len(texts), dtype=bool))


def test_stored_nblr_round_trips_and_predicts_the_same(tmp_path, reviews):
    index = {"neg": 0, "pos": 1}
    texts = [t for t, _ in reviews]
    model = nblr.fit(texts[:300], [index[lab] for _, lab in reviews[:300]], 2, (1, 3), words=2)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [nblr.VOCAB_FILE, nblr.WEIGHTS_FILE]  # no pickle
    back = nblr.NBLR.load(tmp_path)
    assert back.vocabulary == model.vocabulary and back.ngram_range == (1, 3) and back.words == 2
    assert back.settings == model.settings and any(g.startswith(nblr.WORD) for g in back.vocabulary)
    held_out = texts[300:]
    assert np.allclose(back.probabilities(held_out), model.probabilities(held_out), atol=1e-6)
    # it learnt something: better than the majority class on the texts it did not see
    gold = np.array([index[lab] for _, lab in reviews[300:]])
    majority = max(np.mean(gold), 1 - np.mean(gold))
    assert np.mean(back.probabilities(held_out).argmax(1) == gold) > majority + 0.05


def test_three_labels_one_model_per_label(tmp_path):
    texts = ["好好", "很好", "差差", "很差", "一般", "还行一般"]
    model = nblr.fit(texts, [2, 2, 0, 0, 1, 1], 3, min_df=1)
    assert model.weights.shape[0] == 3
    p = model.probabilities(texts)
    assert np.allclose(p.sum(1), 1) and (p.argmax(1) == [2, 2, 0, 0, 1, 1]).all()
    model.save(tmp_path)
    assert np.allclose(nblr.NBLR.load(tmp_path).probabilities(texts), p, atol=1e-6)


def test_mix_weight_zero_is_the_classifier_alone():
    rng = np.random.default_rng(0)
    p_model, p_linear = rng.dirichlet([1, 1], 50), rng.dirichlet([1, 1], 50)
    assert np.array_equal(nblr.mix(p_model, p_linear, 0.0), p_model)
    assert np.allclose(nblr.mix(p_model, p_linear, 1.0), p_linear)
    half = nblr.mix(p_model, p_linear, 0.5)  # two labels: the mean of the two log-odds
    logit = lambda p: np.log(p[:, 1] / p[:, 0])  # noqa: E731
    assert np.allclose(logit(half), (logit(p_model) + logit(p_linear)) / 2)
    gold = p_linear.argmax(1)  # a dev split the linear model gets right: the mix leans its way
    chosen = nblr.choose(p_model, p_linear, gold)
    assert chosen["weight"] > 0.5 and chosen["dev_accuracy"] == 1.0 and chosen["dev"]["0"] <= 1.0


def test_missing_or_corrupt_nblr_fails_in_one_line(tmp_path):
    model = nblr.fit([t for t, _ in TOY], [y for _, y in TOY], 2, min_df=1)
    model.save(tmp_path)
    (tmp_path / nblr.WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors")
    with pytest.raises(CandorError, match="not a candorlm NB-LR model") as err:
        nblr.NBLR.load(tmp_path)
    assert "\n" not in str(err.value)
    model.save(tmp_path)
    meta = json.loads((tmp_path / nblr.VOCAB_FILE).read_text())
    (tmp_path / nblr.VOCAB_FILE).write_text(json.dumps({**meta, "vocabulary": meta["vocabulary"][:-1]}))
    with pytest.raises(CandorError, match="n-grams"):
        nblr.NBLR.load(tmp_path)
    (tmp_path / nblr.VOCAB_FILE).unlink()
    with pytest.raises(CandorError, match="is missing"):
        nblr.NBLR.load(tmp_path)


@pytest.mark.slow
def test_finetune_with_the_ensemble_then_eval_and_predict(tmp_path, reviews):
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in reviews),
                    encoding="utf-8")
    out = tmp_path / "ens"
    result = finetune(None, task="sentiment", data=str(data), out=out, arch="encoder", overrides=TINY,
                      ensemble="nblr", eval_limit=40, **FAST)
    entry = json.loads((out / "task.json").read_text())["ensemble"]
    assert entry["kind"] == "nblr" and entry["weight"] in nblr.MIX_GRID and entry["files"] == [nblr.WEIGHTS_FILE,
                                                                                                nblr.VOCAB_FILE]
    # weights 0 and 1 are on the grid: the chosen mix is never worse on dev than either half alone
    assert entry["dev_accuracy"] >= max(entry["dev_classifier_alone"], entry["dev_nblr_alone"])
    # one table: the mix, the classifier alone, then NB-LR alone, TF-IDF + LR and the majority class
    names = [m["name"] for m in result["models"]]
    assert "NB-LR, weight" in names[0] and "alone" in names[1]
    assert list(result["baselines"]) == ["nblr", "majority", "tfidf_char_1_3_logreg"]
    assert result["baselines"]["nblr"]["features"] == entry["features"]
    # predict uses the mix; with the weight at 0 it is the classifier alone
    task_model = load_task(out)
    texts = [t for t, _ in reviews[:30]]
    mixed = task_model.predict(texts)
    task_model.info = {**task_model.info, "ensemble": {**entry, "weight": 0.0}}
    zero = task_model.predict(texts)
    task_model.linear = None
    assert zero == task_model.predict(texts)
    assert all(m["label"] in ("neg", "pos") for m in mixed)
    # a damaged NB-LR file is found when the run is loaded, in one line
    (out / nblr.WEIGHTS_FILE).write_bytes(b"damaged")
    with pytest.raises(CandorError) as err:
        load_task(out)
    assert "\n" not in str(err.value)
    (out / nblr.VOCAB_FILE).unlink()
    with pytest.raises(CandorError, match="is missing"):
        load_task(out, verify=False)


def test_ensemble_option_is_checked(tmp_path, reviews):
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n"
                            for t, lab in reviews[:50]), encoding="utf-8")
    with pytest.raises(CandorError, match="--ensemble takes nblr or none"):
        finetune(None, task="sentiment", data=str(data), out=tmp_path / "x", arch="encoder", overrides=TINY,
                 ensemble="svm", **FAST)
    assert not (tmp_path / "x").exists()
