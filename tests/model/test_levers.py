"""The recipe's levers (issue 16) build, run and learn: QK-norm, ReLU², zero-initialised output
projections, Muon for the hidden matrices, warmup-stable-decay. Tiny models, a few steps."""

import pytest
import torch

from candorlm.config import resolve
from candorlm.model import build_model
from candorlm.training.budget import wsd
from candorlm.training.optim import build_optimizers, hidden_matrices
from candorlm.training.optim import lr_at

SHAPE = {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32, "vocab_size": 64}


def _learns(model_keys=None, train_keys=None, steps=30):
    torch.manual_seed(0)
    cfg = resolve(model=dict(SHAPE, **(model_keys or {})), train=dict({"lr": 3e-3}, **(train_keys or {})))
    model = build_model(cfg.model)
    opts = build_optimizers(model, cfg)
    x = torch.arange(32).repeat(4, 1) % 7  # a pattern a tiny model learns in a few steps
    losses = []
    for _ in range(steps):
        loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
        losses.append(loss.item())
    return model, opts, losses


@pytest.mark.slow  # each lever trains a few steps
@pytest.mark.parametrize("model_keys, train_keys", [
    ({"qk_norm": True}, None), ({"mlp": "relu2"}, None), ({"zero_init_out": True}, None),
    ({"tie_embeddings": False}, None), (None, {"optimizer": "muon"}), (None, {"optimizer": "muon", "muon_lr": 0.02}),
])
def test_each_lever_trains(model_keys, train_keys):
    _, _, losses = _learns(model_keys, train_keys)
    assert losses[-1] < losses[0] * 0.7, losses


def test_qk_norm_adds_per_head_gains_after_the_old_parameters():
    names = [n for n, _ in build_model(resolve(model=dict(SHAPE, qk_norm=True)).model).named_parameters()]
    plain = [n for n, _ in build_model(resolve(model=SHAPE).model).named_parameters()]
    assert [n for n in names if "q_norm" not in n and "k_norm" not in n] == plain
    assert "blocks.0.attn.q_norm.weight" in names


def test_zero_init_out_starts_each_block_as_the_identity():
    model = build_model(resolve(model=dict(SHAPE, zero_init_out=True)).model)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in model.named_parameters() if n.endswith(("o_proj.weight",
                                                                                            "down_proj.weight")))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    cfg = resolve(model=SHAPE, train={"optimizer": "muon"})
    model = build_model(cfg.model)
    muon, adamw = build_optimizers(model, cfg)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    ids = {id(p) for g in muon.param_groups for p in g["params"]}
    assert ids == {id(p) for p in hidden_matrices(model)}
    assert id(model.tok_emb.weight) not in ids
    assert len(ids) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert len(build_optimizers(model, resolve(model=SHAPE))) == 1


def test_wsd_holds_then_decays_linearly():
    assert wsd(0.0, 0.1) == 1.0 and wsd(0.7, 0.1) == 1.0
    assert wsd(0.85, 0.1) == pytest.approx(0.55) and wsd(1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(50, 1.0, 10, 110, 0.0, "wsd") == 1.0 and lr_at(110, 1.0, 10, 110, 0.0, "wsd") == pytest.approx(0.0)


def test_the_trainer_refuses_muon_rather_than_silently_using_adamw():
    from candorlm.errors import CandorError
    from candorlm.training.optim import build_optimizer

    cfg = resolve(model=SHAPE, train={"optimizer": "muon"})
    with pytest.raises(CandorError, match="muon"):
        build_optimizer(build_model(cfg.model), cfg)
    assert isinstance(build_optimizer(build_model(resolve(model=SHAPE).model), resolve(model=SHAPE)),
                      torch.optim.AdamW)
