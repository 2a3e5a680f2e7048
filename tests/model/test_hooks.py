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
        for suffix in ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                       "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
                       "hook_resid_post"):
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


def test_reading_every_point_but_the_scores_and_pattern_changes_nothing():
    model = small().eval()
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        plain = model(x)
        cached, cache = run_with_cache(model, x, names=lambda n: not n.endswith(("hook_pattern", "hook_attn_scores")))
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


def test_q_k_v_are_the_projections_before_rotary_positions():
    model = small(n_kv_heads=2).eval()
    x = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        _, cache = run_with_cache(model, x, names=["blocks.1.hook_resid_pre", "blocks.1.attn.hook_*"])
        block = model.blocks[1]
        h = block.attn_norm(cache["blocks.1.hook_resid_pre"])
    q, k, v = (cache[f"blocks.1.attn.hook_{n}"] for n in "qkv")
    assert q.shape == (2, 9, 4, 8) and k.shape == v.shape == (2, 9, 2, 8)  # (B, T, H or Hkv, D)
    assert torch.allclose(q, block.attn.q_proj(h).view(2, 9, 4, 8), atol=1e-6)
    assert torch.allclose(k, block.attn.k_proj(h).view(2, 9, 2, 8), atol=1e-6)
    assert torch.allclose(v, block.attn.v_proj(h).view(2, 9, 2, 8), atol=1e-6)


def test_scores_are_scaled_masked_and_give_the_pattern():
    model = small().eval()
    x = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        _, cache = run_with_cache(model, x, names=["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"])
    scores, pattern = cache["blocks.0.attn.hook_attn_scores"], cache["blocks.0.attn.hook_pattern"]
    assert scores.shape == (1, 4, 7, 7)
    above = torch.ones(7, 7, dtype=torch.bool).triu(1)
    assert torch.all(scores[..., above] == float("-inf")) and torch.isfinite(scores[..., ~above]).all()
    assert torch.allclose(scores.softmax(-1), pattern, atol=1e-6)


def test_overwriting_the_scores_changes_the_attention():
    """Scores set to 0 wherever a query may look: each row of the pattern is uniform over 0..t."""
    model = small().eval()
    x = torch.randint(0, 97, (1, 6))
    flat = lambda s, hook: torch.where(torch.isfinite(s), torch.zeros_like(s), s)  # noqa: E731
    with torch.no_grad(), hooks(model, {"blocks.0.attn.hook_attn_scores": flat}):
        out, cache = run_with_cache(model, x, names="blocks.0.attn.hook_pattern")
    uniform = torch.ones(6, 6).tril() / torch.arange(1, 7)[:, None]
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"][0], uniform.expand(4, 6, 6), atol=1e-6)
    assert not torch.allclose(out, model(x))


@pytest.mark.parametrize("point,weight", [("hook_k", "k_proj"), ("hook_v", "v_proj"), ("hook_q", "q_proj")])
def test_zeroing_q_k_or_v_at_the_hook_is_zeroing_its_projection(point, weight):
    """The points sit on the computation's path, on the fused (SDPA) path too."""
    model = small(n_kv_heads=2).eval()
    reference = copy.deepcopy(model)
    torch.nn.init.zeros_(getattr(reference.blocks[0].attn, weight).weight)
    x = torch.randint(0, 97, (2, 8))
    zero = lambda t, hook: torch.zeros_like(t)  # noqa: E731
    with torch.no_grad(), hooks(model, {f"blocks.0.attn.{point}": zero}):
        assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_with_a_cache_k_and_v_hold_the_new_positions_only():
    model = small(n_kv_heads=2).eval()
    x = torch.randint(0, 97, (2, 10))
    kv = model.make_cache(2, 10)
    with torch.no_grad():
        model(x[:, :9], cache=kv)
        _, cache = run_with_cache(model, x[:, 9:], cache=kv, names=["blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern"])
        _, full = run_with_cache(model, x, names="blocks.0.attn.hook_k")
    assert cache["blocks.0.attn.hook_k"].shape == (2, 1, 2, 8)
    assert torch.allclose(cache["blocks.0.attn.hook_k"], full["blocks.0.attn.hook_k"][:, 9:], atol=1e-5)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 1, 10)  # the query sees all 10 keys


def test_cross_attention_points_see_the_source():
    from candorlm.model import Seq2SeqLM

    torch.manual_seed(0)
    model = Seq2SeqLM(ModelConfig(arch="seq2seq", vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                  max_seq_len=32)).eval()
    src, tgt = torch.randint(3, 97, (2, 11)), torch.randint(3, 97, (2, 5))
    with torch.no_grad():
        plain = model(src, tgt)
        out, cache = run_with_cache(model, src, tgt, names="blocks.1.cross_attn.hook_*")
    assert torch.allclose(out, plain, atol=1e-5)
    assert cache["blocks.1.cross_attn.hook_q"].shape == (2, 5, 4, 8)
    assert cache["blocks.1.cross_attn.hook_k"].shape == cache["blocks.1.cross_attn.hook_v"].shape == (2, 11, 2, 8)
    assert cache["blocks.1.cross_attn.hook_attn_scores"].shape == (2, 4, 5, 11)
    assert torch.allclose(cache["blocks.1.cross_attn.hook_attn_scores"].softmax(-1),
                          cache["blocks.1.cross_attn.hook_pattern"], atol=1e-6)
