"""Sentiment's levers: batches grouped by length, the masked-LM stage on the training texts
(--pretrain-mlm) and the masked-LM loss alongside classification (--mlm-weight)."""

import json

import numpy as np
import pytest

from candorlm.corpus import review_records
from candorlm.errors import CandorError
from candorlm.tasks import finetune
from candorlm.tasks.finetune import BUCKET_BATCHES, example_lengths, length_batches
from candorlm.tasks.predict import load_task

FAST = dict(epochs=1, batch_size=16, threads=1, precision="fp32")
TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=96"]


@pytest.fixture(scope="module")
def reviews_file(tmp_path_factory):
    rows = [{"text": t, "label": lab} for t, lab in review_records()[::60]]
    path = tmp_path_factory.mktemp("levers") / "reviews.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_length_batches_cover_every_example_once_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(5, 500, size=1000))
    order = rng.permutation(1000)
    plain = length_batches(order, None, 32, rng)
    grouped = length_batches(order, lengths, 32, rng)
    assert len(grouped) == len(plain) == 32  # ceil(1000 / 32): an epoch is as many steps as before
    assert sorted(int(i) for b in grouped for i in b) == list(range(1000))
    assert all(len(b) <= 32 for b in grouped)

    def padded(batches):  # tokens a batch pads to: its longest example times its size
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)
    # the batches are shuffled, not served shortest first (a bucket is BUCKET_BATCHES batches)
    maxima = [max(lengths[i] for i in b) for b in grouped[:BUCKET_BATCHES]]
    assert maxima != sorted(maxima)



def test_sentiment_and_the_masked_lm_stage_group_by_their_examples_lengths():
    from candorlm.tasks import sentiment
    from candorlm.tasks.mlm_stage import MaskedLM

    assert example_lengths(sentiment, [([5, 6, 7], 1), ([5], 0)]) == [3, 1]
    assert example_lengths(MaskedLM, [[5, 6], [5, 6, 7, 8]]) == [2, 4]
    assert example_lengths(object(), [[5, 6]]) is None  # a task without example_length: not grouped

@pytest.mark.slow
def test_pretrain_mlm_stage_then_classifier(tmp_path, reviews_file):
    out = tmp_path / "tapt"
    result = finetune(None, task="sentiment", data=str(reviews_file), out=out, arch="encoder", overrides=TINY,
                      pretrain_mlm=1, mlm_weight=0.5, eval_limit=20, **FAST)
    info = json.loads((out / "task.json").read_text())
    stage = info["pretrain_mlm"]
    assert stage["epochs"] == 1 and stage["steps"] == info["splits"]["train"] // 16 + 1
    assert len(stage["dev_mlm_loss"]) == 1 and 0 < stage["dev_mlm_loss"][0] < 20
    assert info["mlm_weight"] == 0.5 and info["mask_rate"] == 0.15
    assert (out / "mlm_metrics.jsonl").is_file()
    assert 0 <= result["models"][0]["accuracy"] <= 1 and result["split"]["test"] == 20
    # the run is used as any sentiment run: the masked-LM parts do not change how it predicts
    assert load_task(out).predict(["这个手机很好用"])[0]["label"] in ("neg", "pos")


def test_masked_lm_levers_need_an_encoder(tmp_path, reviews_file):
    with pytest.raises(CandorError, match="needs an encoder"):
        finetune(None, task="sentiment", data=str(reviews_file), out=tmp_path / "d", arch="decoder", overrides=TINY,
                 mlm_weight=1.0, **FAST)
    assert not (tmp_path / "d").exists()
