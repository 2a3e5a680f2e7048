"""DP-SGD: exact per-window gradients, Poisson sampling, the budget spent and recorded."""

import json

import numpy as np
import pytest
import torch

from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.model import DecoderLM, lm_loss
from candorlm.privacy.dp import DPSGD, plan, spent_epsilon
from candorlm.pretrain import train
from tests.conftest import TINY_MODEL, TINY_TRAIN


@pytest.mark.filterwarnings("ignore:.*(autocast|Full backward hook).*")
def test_per_window_gradients_are_exact():
    from opacus.grad_sample import GradSampleModule

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, max_seq_len=16))
    reference = DecoderLM(model.cfg)
    reference.load_state_dict(model.state_dict())
    x, y = torch.randint(0, 50, (3, 8)), torch.randint(0, 50, (3, 8))
    lm_loss(GradSampleModule(model, force_functorch=True)(x), y).backward()
    for i in range(3):
        reference.zero_grad()
        lm_loss(reference(x[i:i + 1]), y[i:i + 1]).backward()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert torch.allclose(p.grad_sample[i], q.grad, atol=1e-6), name  # tied embeddings included


def test_budget_planning_and_accounting():
    budget = plan(epsilon=4.0, delta=None, max_grad_norm=1.0, windows=10_000, expected_batch=32, steps=500, seq_len=64)
    assert budget.delta == 1e-5 and budget.sample_rate == 32 / 10_000
    assert abs(spent_epsilon(budget, 500) - 4.0) < 0.02
    assert spent_epsilon(budget, 100) < spent_epsilon(budget, 300) < spent_epsilon(budget, 500)
    tighter = plan(epsilon=1.0, delta=None, max_grad_norm=1.0, windows=10_000, expected_batch=32, steps=500, seq_len=64)
    assert tighter.noise_multiplier > budget.noise_multiplier
    with pytest.raises(CandorError, match="needs sampling"):
        plan(epsilon=4.0, delta=None, max_grad_norm=1.0, windows=16, expected_batch=32, steps=10, seq_len=64)


def test_poisson_sampling_is_seeded_per_step(data_dir):
    from candorlm.shards import ShardSet

    windows = ShardSet(data_dir).windows("train", 32)
    model = DecoderLM(ModelConfig(vocab_size=512, d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    dp = DPSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), windows, epsilon=8, delta=None,
               max_grad_norm=1.0, batch_size=8, grad_accum=1, steps=100, seed=3)
    sizes = [len(dp.sample(s)) for s in range(200)]
    assert (dp.sample(5) == dp.sample(5)).all() and not np.array_equal(dp.sample(5), dp.sample(6))
    assert 6 < np.mean(sizes) < 10 and len(set(sizes)) > 3  # Poisson: about 8, and varying


@pytest.mark.slow
def test_dp_training_records_the_spent_budget(tmp_path, data_dir):
    run = tmp_path / "dp"
    result = train(run, data=data_dir, model=TINY_MODEL, max_steps=6, dp_epsilon=8.0,
                   **dict(TINY_TRAIN, save_every=3))
    record = json.loads((run / "dp.json").read_text())
    assert record["steps"] == 6 and record["planned_steps"] == 6
    assert abs(record["epsilon_spent"] - 8.0) < 0.05 and record["noise_multiplier"] > 0.3
    assert "one training window of 32 tokens" == record["privacy_unit"]
    assert np.isfinite(result.final_eval["loss"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows if "loss" in r)
    with pytest.raises(CandorError, match="same --dp-\\* settings"):
        train(run, data=data_dir, model=TINY_MODEL, max_steps=9, dp_epsilon=2.0, resume=True,
              **dict(TINY_TRAIN, save_every=3))
