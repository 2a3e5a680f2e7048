"""The scaling sweep: the power-law fit recovers a known law; a two-size sweep trains both sizes
on the same data and seed, writes sweep.json with FLOPs from the ledgers, and draws sweep.png."""

import json

import numpy as np
import pytest

from candorlm.errors import CandorError
from candorlm.scaling.fit import fit_power_law


def test_fit_recovers_a_known_power_law():
    x = np.geomspace(1e12, 1e15, 5)
    law = fit_power_law(x, 7.0 * x ** -0.05)
    assert law.alpha == pytest.approx(0.05, rel=1e-9) and law.a == pytest.approx(7.0, rel=1e-6)
    assert law.r2 == pytest.approx(1.0) and law.log_residual_std == pytest.approx(0.0, abs=1e-12)
    noisy = fit_power_law(x, 7.0 * x ** -0.05 * np.array([1.01, 0.99, 1.0, 1.02, 0.98]))
    assert 0 < noisy.r2 < 1 and noisy.log_residual_std > 0
    with pytest.raises(CandorError):
        fit_power_law([1.0, 1.0], [2.0, 3.0])


@pytest.mark.slow
def test_two_size_sweep(data_dir, tmp_path, capsys):
    from candorlm.scaling import sweep

    out = tmp_path / "sweep"
    doc = sweep(data_dir, out, ["nano", "micro"], steps=6, batch_size=2, seq_len=32, threads=1,
                overrides=["train.precision=fp32"])
    sizes = {r["preset"]: r for r in doc["sizes"]}
    assert set(sizes) == {"nano", "micro"}
    said = " ".join(capsys.readouterr().err.split())
    assert "estimated time: about" in said and "real training step(s) timed now" in said and " left (" in said
    assert sizes["micro"]["non_embedding_parameters"] > sizes["nano"]["non_embedding_parameters"]
    assert sizes["micro"]["flops"] > sizes["nano"]["flops"]
    assert sizes["nano"]["tokens"] == sizes["micro"]["tokens"] == 6 * 2 * 32  # the same budget
    for r in doc["sizes"]:
        ledger = json.loads((out / r["preset"] / "ledger.json").read_text(encoding="utf-8"))
        assert r["flops"] == ledger["train"]["total"]["flops"]["value"]
        assert r["curve"] and r["val_loss"] > 0
    fit = doc["fit"]["loss_vs_flops"]
    assert fit["points"] == 2
    first = doc["sizes"][0]
    assert fit["a"] * first["flops"] ** -fit["alpha"] == pytest.approx(first["val_loss"], rel=1e-6)
    assert doc["extrapolation"]["note"].startswith("an extrapolation")
    assert (out / "sweep.png").stat().st_size > 10_000
    assert json.loads((out / "sweep.json").read_text(encoding="utf-8"))["plot"] == "sweep.png"
    with pytest.raises(CandorError, match="not empty"):
        sweep(data_dir, out, ["nano", "micro"], steps=2)
    with pytest.raises(CandorError, match="unknown preset"):
        sweep(data_dir, tmp_path / "other", ["nano", "huge"], steps=2)
