"""Under CPU bf16 a training batch's width rounds up to a multiple of 16 (few shapes, bounded
memory: device.batch_width_multiple); the padding never changes the loss, and never passes the
model's max_seq_len."""

import importlib
import json

import pytest
import torch

from candorlm.beam import right_pad
from candorlm.corpus import review_records
from candorlm.device import batch_width_multiple
from tests.tasks.test_qa_span import _trivial_rows

TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=96"]


def test_right_pad_rounds_up_within_the_limit_and_never_cuts():
    rows = [[1, 2, 3], [1, 2, 3, 4, 5]]
    assert right_pad(rows, 0)[0].shape == (2, 5)
    ids, mask = right_pad(rows, 0, multiple=4)
    assert ids.shape == (2, 8) and mask.sum().item() == 8 and (ids[:, 5:] == 0).all()
    assert right_pad(rows, 0, multiple=4, limit=6)[0].shape == (2, 6)  # a model's max_seq_len
    assert right_pad(rows, 0, multiple=4, limit=4)[0].shape == (2, 5)  # a limit below the longest row cuts nothing


def test_the_multiple_is_16_only_under_cpu_bf16_autocast():
    assert batch_width_multiple() == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert batch_width_multiple() == 16
    with torch.autocast("cpu", dtype=torch.float16):
        assert batch_width_multiple() == 1


def _prepared(task, tmp_path, pairs_file):
    from candorlm.tasks import qa, sentiment, translate
    from candorlm.tasks.base import load_base

    if task == "translate":
        return translate, translate.prepare(load_base(None, arch="encoder", overrides=TINY), str(pairs_file), head="tag")
    if task == "sentiment":
        path = tmp_path / "reviews.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n"
                                for t, y in review_records()[::200]), encoding="utf-8")
        return sentiment, sentiment.prepare(load_base(None, arch="encoder", overrides=TINY), str(path))
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _trivial_rows(60)), encoding="utf-8")
    return qa, qa.prepare(load_base(None, arch="encoder", overrides=TINY), str(path), head="span")


@pytest.mark.parametrize("task", ["translate", "sentiment", "qa"])
def test_padding_to_the_multiple_leaves_the_loss_as_it_was(task, tmp_path, pairs_file, monkeypatch):
    spec, prepared = _prepared(task, tmp_path, pairs_file)
    module = importlib.import_module("candorlm.beam")  # pad_training_batch, which each task's loss pads with
    widths = []
    real = module.right_pad
    monkeypatch.setattr(module, "right_pad", lambda *a, **k: widths.append(real(*a, **k)[0].shape[1]) or real(*a, **k))
    model = prepared.model.eval()  # no dropout: the two losses must match
    limit = prepared.model_config.max_seq_len
    short = [e for e in prepared.train if (n := len(e[0] if isinstance(e, tuple) else e.ids)) % 16 and n < limit - 16]
    batch = short[:5]  # their longest is not a multiple of 16, and there is room to pad it
    plain = spec.loss(model, batch, torch.device("cpu"), prepared)
    monkeypatch.setattr(module, "batch_width_multiple", lambda: 16)
    padded = spec.loss(model, batch, torch.device("cpu"), prepared)
    assert widths[-1] % 16 == 0 or widths[-1] == limit
    assert widths[-1] > widths[0] and widths[-1] <= limit
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
