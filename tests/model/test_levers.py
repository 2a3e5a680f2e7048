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


# ---------------------------------------------------------------- value embeddings, logit soft-capping


@pytest.mark.slow  # trains a few steps
@pytest.mark.parametrize("model_keys", [{"value_embeds": 1}, {"value_embeds": 2}, {"logit_softcap": 15.0}])
def test_value_embeds_and_softcap_train(model_keys):
    _, _, losses = _learns(model_keys)
    assert losses[-1] < losses[0] * 0.7, losses


def test_value_embeds_come_after_the_old_parameters_and_feed_the_outer_layers():
    from candorlm.model.value_embeds import table_for

    shape = dict(SHAPE, n_layers=4)
    names = [n for n, _ in build_model(resolve(model=dict(shape, value_embeds=1)).model).named_parameters()]
    plain = [n for n, _ in build_model(resolve(model=shape).model).named_parameters()]
    assert names[:len(plain)] == plain and names[len(plain):] == ["value_embeds.gates", "value_embeds.tables.0.weight"]
    assert [table_for(i, 4, 1) for i in range(4)] == [0, None, None, 0]
    assert [table_for(i, 4, 2) for i in range(4)] == [0, 1, 1, 0]
    assert [table_for(i, 3, 3) for i in range(3)] == [0, 1, 2]


def test_value_embeds_change_the_output_and_decode_with_a_cache_as_without():
    torch.manual_seed(0)
    model = build_model(resolve(model=dict(SHAPE, value_embeds=1, n_kv_heads=1)).model).eval()
    x = torch.randint(0, 64, (2, 12))
    full = model(x)
    cache = model.make_cache(2)
    steps = [model(x[:, :5], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        model.value_embeds.tables[0].weight.add_(1.0)
    assert not torch.allclose(model(x), full)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 values, fp32 tables: one dtype into attention
        assert torch.isfinite(model(x[:, :-1], targets=x[:, 1:]))


def test_softcap_bounds_the_logits_and_the_fused_loss_matches_the_plain_one():
    from candorlm.model.loss import cap_logits, lm_loss

    torch.manual_seed(0)
    model = build_model(resolve(model=dict(SHAPE, logit_softcap=2.0)).model)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # logits far beyond the cap
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert float(model(x).abs().max()) <= 2.0
    fused = model(x[:, :-1], targets=x[:, 1:])
    fused.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    hidden = model.hidden_states(x[:, :-1])
    plain = lm_loss(cap_logits(model.lm_head(hidden), 2.0), x[:, 1:])
    plain.backward()
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    per_token = model(x[:, :-1], targets=x[:, 1:], reduction="none")
    torch.testing.assert_close(per_token.mean(), plain.detach(), atol=1e-5, rtol=1e-5)


def test_softcap_and_value_embeds_are_checked():
    from candorlm.errors import CandorError

    with pytest.raises(CandorError, match="logit_softcap"):
        resolve(model=dict(SHAPE, logit_softcap=-1.0))
    with pytest.raises(CandorError, match="decoder"):
        resolve(model=dict(SHAPE, logit_softcap=10.0, arch="encoder"))
    with pytest.raises(CandorError, match="value_embeds"):
        resolve(model=dict(SHAPE, value_embeds=3))
