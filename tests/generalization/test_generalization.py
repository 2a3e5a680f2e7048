"""Domain evaluation: per-document scoring is exact, the probes perturb as documented, the
bootstrap intervals cover their estimates, and `evaluate_domains` writes a gap table."""

import json

import numpy as np
import pytest
import torch

from candorlm.generalization.bootstrap import bpb_interval, gap_interval, paired_gap_interval
from candorlm.generalization.probes import character_noise, to_fullwidth, to_halfwidth
from candorlm.generalization.scoring import DocScores, encode_documents, score_documents, with_context


@pytest.fixture(scope="module")
def lm(trained_run):
    from candorlm.lm import load

    return load(trained_run, device="cpu")


def _reference_nats(model, ids, context):
    """Each window's nats from full logits and log_softmax, the textbook way."""
    total = 0.0
    for start in range(0, len(ids) - 1, context):
        window = torch.tensor([ids[start:start + context + 1]])
        with torch.no_grad():
            logp = torch.log_softmax(model(window[:, :-1]).double(), -1)
        total += float(-logp[0, torch.arange(window.shape[1] - 1), window[0, 1:]].sum())
    return total


def test_scores_match_log_softmax_including_window_cuts(lm):
    texts = ["人民日报记者报道，今年经济增长很快。" * 6, "短文。"]
    scores = score_documents(lm.model, lm.tokenizer, texts, context=16, batch_size=3)
    docs = encode_documents(lm.tokenizer, texts)
    assert len(docs[0]) > 3 * 16  # several windows
    for i, ids in enumerate(docs):
        assert scores.nats[i] == pytest.approx(_reference_nats(lm.model, ids, 16), rel=1e-4)
        assert scores.tokens[i] == len(ids) - 1
    assert list(scores.bytes) == [len(t.encode("utf-8")) for t in texts]
    assert (scores.text_nats < scores.nats).all()  # <|eos|> is scored as a token but stands for no bytes


def test_longer_context_keeps_the_weights(lm):
    longer = with_context(lm.model, 4 * lm.model.cfg.max_seq_len)
    assert longer.cfg.max_seq_len == 4 * lm.model.cfg.max_seq_len
    ids = torch.tensor([encode_documents(lm.tokenizer, ["北京市经济"])[0]])
    torch.testing.assert_close(longer(ids), lm.model(ids))


def test_width_and_noise_probes():
    assert to_halfwidth("１９９８年，中国。（Ａ）") == "1998年,中国.(A)"
    assert to_fullwidth("1998, (A)") == "１９９８，\u3000（Ａ）"
    assert to_halfwidth(to_fullwidth("abc 123!")) == "abc 123!"
    text = "中" * 10000
    noisy = character_noise(0.05, ["甲", "乙"], seed=1)(text)
    changed = sum(a != b for a, b in zip(text, noisy))
    assert 400 < changed < 600 and set(noisy) <= {"中", "甲", "乙"}
    assert character_noise(0.05, ["甲"], seed=1)(text) == character_noise(0.05, ["甲"], seed=1)(text)


def test_traditional_probe_uses_opencc():
    pytest.importorskip("opencc", reason="opencc is not installed (pip install opencc)")
    from candorlm.generalization.probes import to_traditional

    assert to_traditional("经济发展，国家") == "經濟發展，國家"


def _scores(bits_per_byte, n, seed):
    rng = np.random.default_rng(seed)
    nbytes = rng.integers(50, 500, n).astype(float)
    nats = nbytes * bits_per_byte * np.log(2) * rng.uniform(0.8, 1.2, n)
    return DocScores(nats, nats, nbytes.astype(int), nbytes.astype(int), np.zeros(n, dtype=int))


def test_bootstrap_intervals_cover_and_separate():
    a, b = _scores(2.0, 200, 0), _scores(3.0, 200, 1)
    lo, hi = bpb_interval(a)
    assert lo < a.summary()["bpb"] < hi and hi - lo < 0.2
    glo, ghi = gap_interval(b, a)
    assert 0.8 < glo < ghi < 1.2
    same_lo, same_hi = paired_gap_interval(a, a)
    assert same_lo == same_hi == 0.0


def test_evaluate_domains_writes_the_gap_table(trained_run, tmp_path):
    from candorlm.generalization import evaluate_domains

    english = tmp_path / "english.txt"
    english.write_text("\n\n".join(f"The quick brown fox number {i} jumps over the lazy dog." for i in range(30)),
                       encoding="utf-8")
    result = evaluate_domains(trained_run, ["builtin:reviews", str(english)], max_docs=20, max_chars=300)
    saved = json.loads((trained_run / "evals" / "domains.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(result))
    ind = result["in_domain"]
    assert ind["documents"] > 0 and ind["ci"][0] <= ind["bpb"] <= ind["ci"][1]
    names = [r["name"] for r in result["domains"]]
    assert names == ["builtin:reviews", str(english)]
    for r in result["domains"]:
        assert r["documents"] == 20
        assert r["gap"] == pytest.approx(r["bpb"] - ind["bpb"], abs=1e-3)
        assert r["gap_ci"][0] <= r["gap"] <= r["gap_ci"][1]
    # English prose is far from People's Daily for a model trained on 150 articles.
    assert result["domains"][1]["gap"] > 0
    probes = {p["name"]: p for p in result["probes"]}
    assert {"halfwidth", "fullwidth", "noise-1%", "noise-5%", "traditional"} <= set(probes)
    assert probes["noise-5%"]["delta"] > probes["noise-1%"]["delta"] > 0  # more noise, more surprise
    assert probes["halfwidth"]["documents_changed"] > 0
    ctx = {c["name"]: c for c in result["context"]}
    assert ctx["context-1x"]["bpb_beyond_train_length"] is None
    assert ctx["context-4x"]["context"] == 4 * result["model"]["train_seq_len"]
    assert ctx["context-4x"]["bpb_beyond_train_length"] is not None


def test_eval_cli_domains_and_errors(trained_run):
    from typer.testing import CliRunner

    from candorlm.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["eval", str(trained_run), "--domains", "builtin:reviews", "--max-docs", "10",
                               "--no-probes"])
    assert done.exit_code == 0, done.output
    assert "gap" in done.output and "domains.json" in done.output
    saved = json.loads((trained_run / "evals" / "domains.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in saved["domains"]] == ["builtin:reviews"] and saved["probes"] == []
    both = runner.invoke(app, ["eval", str(trained_run)])
    assert both.exit_code != 0 and "--domains" in str(both.exception or both.output)
    bad = runner.invoke(app, ["eval", str(trained_run), "--domains", "builtin:nope"])
    assert bad.exit_code != 0 and "builtin:nope" in str(bad.exception)
