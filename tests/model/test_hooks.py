"""Hook points: named, readable, overwritable; unused they change nothing; the explicit attention
they switch to (for the pattern) matches SDPA."""

import copy

import pytest
import torch

from candorlm.config import ModelConfig
from candorlm.model import DecoderLM, lm_loss
from candorlm.model.hooks import HookPoint, compile_out_hook_points, hook_points, hooks, run_with_cache


def small(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return DecoderLM(ModelConfig(**base))


def test_hook_points_are_named_like_transformer_lens():
    names = set(hook_points(small()))
    for i in range(2):
        for suffix in ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                       "hook_mlp_out", "hook_resid_post"):
            assert f"blocks.{i}.{suffix}" in names
    assert {"hook_embed", "hook_norm"} <= names
    assert all(not p.active for p in hook_points(small()).values())


def test_unused_hooks_leave_the_training_step_bitwise_identical():
    x = torch.randint(0, 97, (4, 16))
    results = []
    for model in (small(), compile_out_hook_points(small())):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(3):
            loss = lm_loss(model(x[:, :-1]), x[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        results.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    (la, pa), (lb, pb) = results
    assert not hook_points(model)  # the second model really had none
    assert torch.equal(la, lb)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))


def test_reading_every_point_but_the_pattern_changes_nothing():
    model = small().eval()
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        plain = model(x)
        cached, cache = run_with_cache(model, x, names=lambda n: not n.endswith("hook_pattern"))
    assert torch.equal(plain, cached)
    assert cache["blocks.1.hook_resid_post"].shape == (2, 12, 32)
    assert cache["blocks.0.attn.hook_z"].shape == (2, 12, 4, 8)
    # The last residual stream through the final norm and unembedding is the output.
    assert torch.allclose(model.lm_head(model.norm(cache["blocks.1.hook_resid_post"])), plain, atol=1e-6)
    assert torch.allclose(model.lm_head(cache["hook_norm"]), plain, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}])
def test_explicit_attention_matches_sdpa_with_padding_and_cache(kw):
    model = small(**kw).eval()
    x = torch.randint(1, 97, (2, 14))
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            plain = model(x, **kwargs)
            explicit, cache = run_with_cache(model, x, names="blocks.*.attn.hook_pattern", **kwargs)
            assert torch.allclose(plain, explicit, atol=1e-5)
        kv = model.make_cache(2, 14)
        model(x[:, :9], cache=kv)
        step, cache = run_with_cache(model, x[:, 9:10], cache=kv, names="blocks.0.attn.hook_pattern")
        assert torch.allclose(step[:, 0], model(x[:, :10])[:, -1], atol=1e-5)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, 4, 1, 10)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 1), atol=1e-5)


def test_pattern_is_causal_and_normalized():
    model = small().eval()
    _, cache = run_with_cache(model, torch.randint(0, 97, (1, 10)), names="blocks.*.attn.hook_pattern")
    p = cache.stack("attn.hook_pattern")  # (layer, B, H, T, T)
    assert p.shape == (2, 1, 4, 10, 10)
    assert torch.allclose(p.sum(-1), torch.ones(2, 1, 4, 10), atol=1e-5)
    assert p.triu(1).abs().max() == 0


def test_overwriting_a_point_changes_the_computation():
    model = small().eval()
    x = torch.randint(0, 97, (2, 10))
    zero = lambda t, hook: torch.zeros_like(t)  # noqa: E731
    reference = copy.deepcopy(model)
    for block in reference.blocks:
        torch.nn.init.zeros_(block.mlp.down_proj.weight)  # the MLPs contribute nothing
    with torch.no_grad(), hooks(model, {"blocks.*.hook_mlp_out": zero}):
        ablated = model(x)
    assert torch.allclose(ablated, reference(x), atol=1e-6)
    assert not torch.allclose(ablated, model(x))


def test_head_output_patch_touches_only_that_head():
    model = small().eval()
    x = torch.randint(0, 97, (1, 8))

    def kill_head_2(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    with torch.no_grad():
        _, clean = run_with_cache(model, x, names="blocks.1.attn.hook_z")
        with hooks(model, {"blocks.1.attn.hook_z": kill_head_2}):
            _, patched = run_with_cache(model, x, names=["blocks.1.attn.hook_z", "blocks.0.hook_resid_post"])
    z0, z1 = clean["blocks.1.attn.hook_z"], patched["blocks.1.attn.hook_z"]
    assert torch.equal(z1[:, :, 2], torch.zeros_like(z1[:, :, 2]))
    assert torch.equal(z0[:, :, [0, 1, 3]], z1[:, :, [0, 1, 3]])


def test_hooks_are_detached_after_errors_and_bad_names_are_listed():
    model = small()
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(model, {"blocks.0.hook_resid_pre": lambda x, hook: None}):
            raise RuntimeError("boom")
    assert not any(p.active for p in hook_points(model).values())
    with pytest.raises(KeyError, match="blocks.0.hook_resid_pre"):
        run_with_cache(model, torch.zeros(1, 3, dtype=torch.long), names="blocks.0.hook_nothing")


def test_gradients_flow_through_a_cached_activation():
    model = small()
    out, cache = run_with_cache(model, torch.randint(0, 97, (1, 6)), names="blocks.0.hook_resid_mid", detach=False)
    resid = cache["blocks.0.hook_resid_mid"]
    (grad,) = torch.autograd.grad(out[0, -1].logsumexp(-1), resid)
    assert grad.shape == resid.shape and grad[0, -1].abs().sum() > 0
    assert isinstance(hook_points(model)["hook_embed"], HookPoint)
