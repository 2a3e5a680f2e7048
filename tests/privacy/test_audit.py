"""Canaries and the memorization audit, from the command line down to the statistics."""

import json
import math

import numpy as np
import pytest

from candorlm.errors import CandorError
from candorlm.privacy.audit import audit, exposure_from_fit, roc_auc, split_documents, tpr_at_fpr
from candorlm.privacy.canaries import CanaryCorpus, make_canaries, parse_repeats
from candorlm.privacy.integrity import verify
from candorlm.shards import is_validation
from candorlm.pretrain import train
from tests.conftest import TINY_MODEL, TINY_TRAIN, assert_clean_error, run_cli, write_articles


def test_roc_auc_and_tpr():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5  # ties count half
    rng = np.random.default_rng(0)
    assert abs(roc_auc(rng.normal(size=2000), rng.normal(size=2000)) - 0.5) < 0.03
    assert tpr_at_fpr(np.array([5.0, 6.0, 0.0]), np.arange(100.0) / 100, 0.01) == pytest.approx(2 / 3)


def test_exposure_from_fit_tracks_the_tail():
    rng = np.random.default_rng(0)
    sample = rng.normal(50.0, 2.0, size=2000)
    assert exposure_from_fit(50.0, sample, 1e8) == pytest.approx(1.0, abs=0.2)  # the median: half beat it
    deep = exposure_from_fit(50.0 - 2.0 * 6, sample, 1e8)  # six standard deviations below
    assert 25 < deep <= math.log2(1e8)


def test_canaries_are_trained_on_and_spread():
    canaries = make_canaries(3, [1, 10], "卡号####-####", seed=1, val_fraction=0.5)
    assert [c.repeats for c in canaries.canaries] == [1, 1, 1, 10, 10, 10, 0, 0, 0]
    assert all(not is_validation(c.text, 0.5) for c in canaries.canaries)
    assert len({c.secret for c in canaries.canaries}) == 9 and canaries.prefix == "卡号"
    docs = list(CanaryCorpus([f"doc {i}" for i in range(50)], canaries))
    texts = [getattr(d, "text", d) for d in docs]
    assert len(texts) == 50 + 3 + 30 and texts.count(canaries.canaries[3].text) == 10
    assert parse_repeats("1,10,100") == [1, 10, 100]
    with pytest.raises(CandorError, match="no '#'"):
        make_canaries(1, [1], "no digits here")


def test_audit_work_is_weighed_in_flops():
    import torch

    from candorlm.privacy.audit_cost import audit_flops, flops_per_token

    assert flops_per_token(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))) == 24  # 2 x 12
    base = audit_flops(1e6, 64, 6, 12, 300, [40] * 20, 16, 8, 2, 32)
    assert all(part > 0 for part in base) and base[2] == 1e6 * 40 * 20
    assert audit_flops(1e6, 64, 0, 0, 300, [40] * 20, 16, 8, 2, 32)[0] == 0  # no canaries planted: no exposure work
    more = audit_flops(1e6, 64, 6, 12, 3000, [40] * 40, 16, 8, 4, 32)
    assert more[0] > 9 * base[0] and more[2] == 2 * base[2] and more[3] == 2 * base[3]


def test_split_documents():
    arr = np.array([1, 5, 6, 2, 1, 7, 2, 1, 8])  # bos=1, eos=2; the last document is cut
    assert [d.tolist() for d in split_documents([arr], 1, 2)] == [[5, 6], [7], [8]]


@pytest.mark.slow
def test_prepare_train_audit_from_the_command_line(tmp_path):
    corpus = write_articles(tmp_path / "c.txt", 0, 25)
    data, run, dp_run = tmp_path / "data", tmp_path / "run", tmp_path / "dp"
    run_cli("prepare", corpus, "--out", data, "--tokenizer", "char", "--vocab-size", "2000", "--val-fraction", "0.2",
            "--canaries", "2", "--repeats", "1,60", "--canary-format", "我的密码是####。")
    planted = json.loads((data / "canaries.json").read_text(encoding="utf-8"))
    assert len(planted["canaries"]) == 6
    settings = dict(TINY_TRAIN, lr=3e-3, eval_every=100)
    train(run, data=data, model=TINY_MODEL, max_steps=60, **settings)
    assert (run / "canaries.json").is_file()
    out = run_cli("audit", run, "--samples", "10", "--candidates", "300", "--generations", "2")
    assert "mean exposure" in out.stderr + out.stdout
    said = " ".join(out.stderr.split())
    assert "estimated time: about" in said and "measured on this machine" in said  # before it starts
    result = json.loads((run / "evals" / "privacy.json").read_text(encoding="utf-8"))
    by = result["canaries"]["by_repeats"]
    assert set(by) == {"0", "1", "60"} and result["canaries"]["candidate_space"] == 10_000
    # 60 copies are memorized (measured: 7.8 bits of log2(10^4) = 13.3); unseen controls are not (0.9)
    assert by["60"]["mean_exposure"] > by["0"]["mean_exposure"] + 3, by
    assert 0.0 <= result["membership"]["auc"] <= 1.0 and result["membership"]["train_documents"] > 0
    assert set(result["extraction"]) == {"prefix_tokens", "suffix_tokens", "train", "heldout"}
    assert result["pii_regurgitation"]["generations"] == 2
    assert result["differential_privacy"] is None
    assert verify(run).ok  # the audit updated the run's manifest

    sets = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    sets += [f"--set=train.{k}={json.dumps(v)}" for k, v in settings.items()]
    run_cli("train", "--data", data, "--out", dp_run, "--max-steps", "3", "--dp-epsilon", "8", *sets)
    dp = audit(dp_run, samples=5, candidates=50, generations=2)["differential_privacy"]
    assert dp["epsilon_target"] == 8.0 and dp["epsilon_spent"] <= 8.05
    assert_clean_error(run_cli("audit", tmp_path, check=False), "not a candorlm run")
