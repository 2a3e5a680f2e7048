"""`candorlm plan`: the choice of size for a time budget, from a sweep's curves and throughputs."""

import math

import pytest

from candorlm.errors import CandorError
from candorlm.scaling.plan import choose, plan, predict


def _row(preset, params, a, alpha, tps, steps=100, per_step=1000):
    curve = [{"step": s, "val_loss": a * (s * per_step) ** -alpha, "val_bpb": 0.5 * a * (s * per_step) ** -alpha}
             for s in (20, 40, 60, 80, 100)]
    return {"preset": preset, "parameters": params, "model": {"vocab_size": 512}, "tokens": steps * per_step,
            "tokens_per_s": tps, "curve": curve}


def sweep_doc():
    # a small fast size that learns slowly and a big slow one that learns fast: the budget decides
    return {"steps": 100, "batch_size": 4, "sizes": [_row("nano", 1e5, 10.0, 0.10, 4000.0),
                                                     _row("tiny", 1e6, 60.0, 0.25, 1000.0)]}


def test_predict_recovers_an_exact_power_law_with_a_narrow_interval():
    tokens = [1e3, 2e3, 4e3, 8e3]
    law, p = predict(tokens, [5 * t ** -0.2 for t in tokens], 16e3)
    assert law.alpha == pytest.approx(0.2)
    assert p.loss == pytest.approx(5 * 16e3 ** -0.2)
    assert p.low <= p.loss <= p.high and p.high / p.low < 1.01
    assert p.beyond == 2.0


def test_the_choice_moves_to_the_bigger_size_as_the_budget_grows():
    doc = sweep_doc()
    tps = {"nano": 4000.0, "tiny": 1000.0}
    short, long = choose(doc, 30, tps, eval_tokens=0), choose(doc, 36000, tps, eval_tokens=0)
    assert short["best"] == "nano" and long["best"] == "tiny"
    nano = next(r for r in short["candidates"] if r["preset"] == "nano")
    assert nano["tokens"] == 120000
    assert nano["val_loss"] == pytest.approx(10 * 120000 ** -0.1, rel=1e-3)
    assert nano["val_bpb"] == pytest.approx(0.5 * nano["val_loss"], rel=1e-3)
    assert 0.5 <= short["confidence"] <= 1.0


def test_confidence_is_a_coin_toss_when_two_sizes_predict_the_same():
    doc = {"steps": 100, "batch_size": 4, "sizes": [_row("a", 1e5, 10.0, 0.1, 1000.0),
                                                    _row("b", 2e5, 10.0, 0.1, 1000.0)]}
    # noisy curves: two equal predictions with real spread
    for row, sign in zip(doc["sizes"], (1, -1)):
        for i, p in enumerate(row["curve"]):
            p["val_loss"] *= math.exp(sign * 0.01 * (-1) ** i)
    out = choose(doc, 60, {"a": 1000.0, "b": 1000.0}, eval_tokens=0)
    assert 0.45 <= out["confidence"] <= 0.6


def test_the_final_evaluation_comes_out_of_the_budget():
    doc = sweep_doc()
    tps = {"nano": 4000.0, "tiny": 1000.0}
    with_eval = choose(doc, 60, tps, eval_tokens=12000)
    nano = next(r for r in with_eval["candidates"] if r["preset"] == "nano")
    assert nano["tokens"] == int(4000 * (60 - 12000 / 12000))


def test_plan_reads_a_sweep_and_says_what_is_missing(tmp_path):
    from candorlm.io.files import write_json

    with pytest.raises(CandorError, match="--sweep"):
        plan("10m")
    with pytest.raises(CandorError, match="sweep.json"):
        plan("10m", sweep=tmp_path)
    write_json(tmp_path / "sweep.json", sweep_doc())
    out = plan("10m", sweep=tmp_path, probe=False)
    assert out["best"] in ("nano", "tiny") and out["time_s"] == 600
    assert out["throughput"] == "the sweep's own tokens/s"
    with pytest.raises(CandorError, match="duration"):
        plan("ten minutes", sweep=tmp_path, probe=False)


@pytest.mark.slow  # starts the command line and probes this machine
def test_plan_command_prints_the_sizes_and_the_choice(tmp_path):
    from candorlm.io.files import write_json
    from tests.conftest import assert_clean_error, run_cli

    write_json(tmp_path / "sweep.json", sweep_doc())
    proc = run_cli("plan", "--time", "10m", "--sweep", tmp_path, "--no-probe")
    assert "nano" in proc.stdout and "tiny" in proc.stdout and "best:" in proc.stderr
    assert_clean_error(run_cli("plan", "--time", "soon", "--sweep", tmp_path, "--no-probe", check=False),
                       "duration")
    assert_clean_error(run_cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--auto-size", check=False),
                       "--time")
