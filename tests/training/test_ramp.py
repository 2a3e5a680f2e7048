"""Batch-size and sequence-length warmup (training/ramp.py): the shapes, and windows cut without skipping tokens."""

import pytest
import torch

from candorlm.errors import CandorError
from candorlm.config import resolve
from candorlm.shards import BatchSampler, WindowIndex
from candorlm.training.ramp import RAMP_START, batch_shape, ramp, ramped_batch


def test_ramps_grow_from_a_quarter_to_the_full_size_over_their_share():
    assert ramp(0.0, 0.0) == 1.0 and ramp(0.5, 0.0) == 1.0
    assert ramp(0.0, 0.2) == RAMP_START and ramp(0.1, 0.2) == pytest.approx(0.625) and ramp(0.3, 0.2) == 1.0
    assert batch_shape(16, 256, 0.0, 0.2, 0.0) == (4, 256)
    assert batch_shape(16, 256, 0.0, 0.0, 0.2) == (16, 64)
    assert batch_shape(16, 256, 0.1, 0.2, 0.2) == (10, 160)
    assert batch_shape(16, 256, 1.0, 0.2, 0.2) == (16, 256)
    assert batch_shape(2, 16, 0.0, 0.5, 0.5) == (1, 8)


def test_short_windows_are_cut_from_whole_ones_in_order():
    import numpy as np

    tokens = np.arange(1000, dtype=np.uint16)
    sampler = BatchSampler(WindowIndex([tokens], 32), 4, seed=0)
    twin = BatchSampler(WindowIndex([tokens], 32), 4, seed=0)
    x, y = ramped_batch(sampler, 3, 16)
    whole_x, whole_y = twin.next_batch(2)  # two whole windows give four of 16: three are used
    assert x.shape == y.shape == (3, 16)
    assert torch.equal(x, whole_x.reshape(-1, 16)[:3]) and torch.equal(y, whole_y.reshape(-1, 16)[:3])
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert ramped_batch(sampler, 4, 32)[0].shape == (4, 32)


def test_ramp_shares_are_checked():
    with pytest.raises(CandorError, match="batch_warmup"):
        resolve(train={"batch_warmup": 1.5})
    with pytest.raises(CandorError, match="seq_warmup"):
        resolve(train={"seq_warmup": -0.1})


@pytest.mark.slow  # trains
def test_the_trainer_ramps_and_aligns_and_trains_value_embeds_and_softcap(tmp_path, data_dir, monkeypatch):
    import candorlm.training.trainer as trainer_module
    from candorlm.lm import load
    from candorlm.pretrain import train
    from tests.conftest import TINY_MODEL, TINY_TRAIN

    shapes = []
    real = trainer_module.ramped_batch

    def spy(sampler, rows, length):
        x, y = real(sampler, rows, length)
        shapes.append(tuple(x.shape))
        return x, y

    monkeypatch.setattr(trainer_module, "ramped_batch", spy)
    settings = dict(TINY_TRAIN, batch_size=8, batch_warmup=0.5, seq_warmup=0.5, align_windows=True)
    result = train(tmp_path / "run", data=data_dir, model=dict(TINY_MODEL, value_embeds=1, logit_softcap=15.0),
                   max_steps=10, **settings)
    assert result.steps == 10 and shapes[0] == (2, 8) and shapes[-1] == (8, 32)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(shapes, shapes[1:]))
    lm = load(tmp_path / "run")
    assert lm.model.cfg.value_embeds == 1 and lm.model.cfg.logit_softcap == 15.0
