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


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _prepared(task, tmp_path, pairs_file, data_dir):
    from candorlm.tasks import qa, sentiment, translate
    from candorlm.tasks.base import load_base

    if task == "translate-tag":
        return translate, translate.prepare(load_base(None, arch="encoder", overrides=TINY), str(pairs_file), head="tag")
    if task == "translate-seq2seq":
        return translate, translate.prepare(load_base(None, arch="seq2seq", overrides=TINY), str(pairs_file))
    if task == "sentiment":
        rows = [{"text": t, "label": y} for t, y in review_records()[::200]]
        return sentiment, sentiment.prepare(load_base(None, arch="encoder", overrides=TINY), _write(tmp_path / "r.jsonl", rows))
    if task == "chat":
        return _chat(data_dir)
    arch, head = {"qa-span": ("encoder", "span"), "qa-decoder": ("decoder", "generate"),
                  "qa-seq2seq": ("seq2seq", "generate")}[task]
    data = _write(tmp_path / "qa.jsonl", _trivial_rows(60))
    return qa, qa.prepare(load_base(None, arch=arch, overrides=TINY), data, head=head)


def _chat(data_dir):
    """A tiny decoder and conversations of several lengths; the prompt loss on, so that its
    targets are padded too."""
    from types import SimpleNamespace

    from candorlm.config import ModelConfig
    from candorlm.model import build_model
    from candorlm.tasks import chat
    from candorlm.tokenizer import Tokenizer

    tok = Tokenizer.load(data_dir / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=96)
    question = [{"role": "user", "content": "中国的首都是哪里？"}, {"role": "assistant", "content": "北京"}]
    train = [(*chat.sft_example(tok, [{"role": "system", "content": "简短回答。" * n}, *question], 96), None)
             for n in range(1, 8)]
    return chat, SimpleNamespace(model=build_model(cfg), model_config=cfg, tokenizer=tok, train=train,
                                 info={"prompt_loss": 0.5})


def _length(example) -> int:
    return max(len(x) for x in example[:2] if isinstance(x, list))


TASKS = ["translate-tag", "translate-seq2seq", "sentiment", "qa-span", "qa-decoder", "qa-seq2seq", "chat"]


@pytest.mark.parametrize("task", TASKS)
def test_padding_to_the_multiple_leaves_the_loss_as_it_was(task, tmp_path, pairs_file, data_dir, monkeypatch):
    spec, prepared = _prepared(task, tmp_path, pairs_file, data_dir)
    module = importlib.import_module("candorlm.beam")  # pad_training_batch, which each task's loss pads with
    widths = []
    real = module.right_pad
    monkeypatch.setattr(module, "right_pad", lambda *a, **k: widths.append(real(*a, **k)[0].shape[1]) or real(*a, **k))
    model = prepared.model.eval()  # no dropout: the two losses must match
    limit = prepared.model_config.max_seq_len
    batch = [e for e in prepared.train if _length(e) < limit - 16 and _length(e) % 16][:5]  # to pad, with room
    plain = spec.loss(model, batch, torch.device("cpu"), prepared)
    unpadded, widths[:] = list(widths), []
    monkeypatch.setattr(module, "batch_width_multiple", lambda: 16)
    padded = spec.loss(model, batch, torch.device("cpu"), prepared)
    assert len(widths) == len(unpadded) > 0
    assert all(w % 16 == 0 and u <= w < u + 16 for u, w in zip(unpadded, widths)), (unpadded, widths)
    assert widths != unpadded  # some width was not a multiple of 16 and was padded
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)


def test_the_masked_lm_stage_pads_its_training_batches_and_never_masks_the_padding(tmp_path, pairs_file, data_dir,
                                                                                  monkeypatch):
    from candorlm.tasks import sentiment
    from candorlm.tasks.mlm_stage import masked_lm_stage
    from candorlm.training import objectives

    spec, prepared = _prepared("sentiment", tmp_path, pairs_file, data_dir)
    stage = masked_lm_stage(sentiment, prepared, "encoder")
    seen = []
    real = objectives.mask_tokens
    monkeypatch.setattr("candorlm.tasks.mlm_stage.mask_tokens", lambda ids, *a: seen.append(ids) or real(ids, *a))
    monkeypatch.setattr(importlib.import_module("candorlm.beam"), "batch_width_multiple", lambda: 16)
    rows = [r for r in stage.train if len(r) % 16][:4]
    loss = stage.loss(prepared.model, rows, torch.device("cpu"), prepared)
    ids = seen[-1]
    assert ids.shape[1] % 16 == 0 and ids.shape[1] > max(len(r) for r in rows) and torch.isfinite(loss)
    inputs, targets = real(ids, stage.tokenizer, torch.Generator().manual_seed(0), 0.9)
    assert (targets[ids == stage.tokenizer.pad_id] == objectives.IGNORE).all()
    seen.clear()
    stage.dev_metrics(prepared.model, prepared, torch.device("cpu"))  # evaluation batches are as wide as their rows
    assert seen[0].shape[1] == max(len(r) for r in stage.dev[:64])
