"""`train.compile` on the CPU: the trainer compiles the blocks (model/compiled.py); the run logs the
eager run's losses and its checkpoint loads into an eager model."""

import json

import pytest
import torch
from safetensors import safe_open

from candorlm.checkpoint.retention import list_checkpoints
from candorlm.lm import load
from candorlm.pretrain import train
from tests.conftest import TINY_MODEL, TINY_TRAIN

pytestmark = pytest.mark.slow  # trains, and compiles


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_compiled_run_matches_eager_and_loads_eager(tmp_path, data_dir):
    settings = dict(TINY_TRAIN, save_every=4)
    eager = train(tmp_path / "eager", data=data_dir, model=TINY_MODEL, max_steps=4, compile=False, **settings)
    compiled = train(tmp_path / "compiled", data=data_dir, model=TINY_MODEL, max_steps=4, compile=True, **settings)
    assert losses(compiled.run_dir) == pytest.approx(losses(eager.run_dir), rel=1e-4)  # fp32: summation order only
    [checkpoint] = list_checkpoints(compiled.run_dir / "checkpoints")
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        names = set(f.keys())
    with safe_open(eager.run_dir / "checkpoints" / checkpoint.name / "model.safetensors", "pt") as f:
        assert names == set(f.keys())  # the eager model's names: no `_orig_mod.` prefixes
    lm, reference = load(compiled.run_dir), load(eager.run_dir)  # eager models, from the safetensors weights
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), reference.model(ids), rtol=1e-3, atol=1e-3)
