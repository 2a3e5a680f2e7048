"""Fused projections (model/fused.py) and written-out operators (model/ops.py): q/k/v run as one
matmul, and the model computes what the block's formulas say, one projection at a time;
gradients reach each weight as from separate layers; the weight kept for gradient-free calls
follows every update; layers with module hooks run one by one; RMSNorm, SwiGLU and rotary
positions equal their composites, forward and backward."""

import copy

import pytest
import torch
import torch.nn.functional as F

from candorlm.config import ModelConfig
from candorlm.model import DecoderLM, ops
from candorlm.model.fused import SAMPLE_STRIDE, watched
from candorlm.model.layers import apply_rope


def small(**kw) -> DecoderLM:
    torch.manual_seed(0)
    base = {"vocab_size": 97, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}
    base.update(kw)
    return DecoderLM(ModelConfig(**base))


def unfused_logits(model: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    """The decoder written out from its formulas, each projection its own matmul, keys and
    values repeated per query group (the code before the fusion)."""
    cfg = model.cfg
    B, T = ids.shape
    cos, sin = model.rope.span(0, T)

    def norm(m, x):
        return m.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=m.eps).to(x.dtype)

    def heads(y, n):
        return y.view(B, T, n, cfg.head_dim).transpose(1, 2)

    x = model.tok_emb(ids)
    for block in model.blocks:
        a, m = block.attn, block.mlp
        h = norm(block.attn_norm, x)
        q = apply_rope(heads(F.linear(h, a.q_proj.weight), cfg.n_heads), cos, sin)
        k = apply_rope(heads(F.linear(h, a.k_proj.weight), cfg.kv_heads), cos, sin)
        v = heads(F.linear(h, a.v_proj.weight), cfg.kv_heads)
        group = cfg.n_heads // cfg.kv_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, -1), a.o_proj.weight)
        h = norm(block.mlp_norm, x)
        x = x + F.linear(F.silu(F.linear(h, m.gate_proj.weight)) * F.linear(h, m.up_proj.weight), m.down_proj.weight)
    return F.linear(norm(model.norm, x), model.lm_head.weight)


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_logits_and_loss_are_the_unfused_formula(kv_heads):
    model = small(n_kv_heads=kv_heads)
    ids = torch.randint(0, 97, (3, 20))
    ref = unfused_logits(model, ids[:, :-1])
    assert torch.allclose(model(ids[:, :-1]), ref, atol=1e-5)
    loss = model(ids[:, :-1], targets=ids[:, 1:])
    ref_loss = F.cross_entropy(ref.reshape(-1, 97), ids[:, 1:].reshape(-1))
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    with torch.no_grad():  # the kept weight
        assert torch.allclose(model(ids[:, :-1]), ref, atol=1e-5)


def test_under_bf16_autocast_the_loss_is_the_unfused_formulas_to_bf16_rounding():
    model = small()
    ids = torch.randint(0, 97, (3, 20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        ref = F.cross_entropy(unfused_logits(model, ids[:, :-1]).float().reshape(-1, 97), ids[:, 1:].reshape(-1))
    assert abs(loss.item() - ref.item()) < 1e-2 * ref.item()


def _hook_every_projection(model: DecoderLM) -> list[str]:
    seen: list[str] = []
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            module.register_forward_hook(lambda mod, args, out, name=name: seen.append(name))
    return seen


def test_gradients_are_those_of_separate_layers_and_hooked_layers_run_one_by_one():
    fused = small(n_kv_heads=2)
    separate = copy.deepcopy(fused)
    seen = _hook_every_projection(separate)
    assert watched(separate.blocks[0].attn.q_proj) and not watched(fused.blocks[0].attn.q_proj)
    ids = torch.randint(0, 97, (3, 20))
    for model in (fused, separate):
        model(ids[:, :-1], targets=ids[:, 1:]).backward()
    assert len(seen) == 2 * 5  # every projection of both blocks ran as a module, so its hook saw it
    grads = dict(separate.named_parameters())
    for name, p in fused.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-6), name


def test_the_weight_kept_for_gradient_free_calls_follows_every_update():
    model = small()
    ids = torch.randint(0, 97, (2, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        with torch.no_grad():
            kept = model(ids)
        assert torch.allclose(kept, unfused_logits(model, ids), atol=1e-5)
        model(ids, targets=ids).backward()
        opt.step()  # in place: the version counters move, the kept weight is rebuilt
        opt.zero_grad()
    with torch.no_grad():
        before = model(ids)
        model.load_state_dict(small(d_model=32, vocab_size=97, n_heads=4, init_std=0.05).state_dict())
        after = model(ids)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, unfused_logits(model, ids), atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # kept in autocast's dtype
        cache = model.make_cache(2, 12)
        model(ids, cache=cache)
    assert len(cache.fused) == 2 and {entry.dtype for entry in cache.fused.values()} == {torch.bfloat16}
    assert model.blocks[0].attn.q_proj.__dict__["_fused_kept"].fused.dtype == torch.bfloat16
    assert not any("fused" in k for k in model.state_dict())


@pytest.mark.parametrize("write", ["copy_", ".data =", ".data.copy_", "assign", "fused AdamW", ".data run"])
def test_weights_written_any_way_are_read_by_the_next_pass_and_generation(write):
    """However the weights are written between two calls (some ways leave the version counters
    alone: `.data`, the fused AdamW kernel stepped by a loop outside candorlm; a run of values in
    one projection), the next forward pass and the next generation read them, as a model that
    never kept anything does."""
    from candorlm.generate import SamplingConfig, generate_ids

    model = small().eval()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    prompts, greedy = [[5, 6, 7], [8, 9]], SamplingConfig(max_new_tokens=10, greedy=True)

    def passes(m: DecoderLM) -> tuple:
        with torch.no_grad():
            return m(ids), m(ids, cache=m.make_cache(2, 12)), generate_ids(m, prompts, greedy, compile=False)

    before = passes(model)  # each made and used a concatenated weight
    new = small(init_std=0.2).state_dict()
    if write == "fused AdamW":
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # no candorlm hook on it
        model(ids, targets=ids).backward()
        optimizer.step()
    elif write == "assign":
        model.load_state_dict(new, assign=True)
    elif write == ".data run":  # part of one projection: any SAMPLE_STRIDE values in a row hold a sampled one
        k, span = model.blocks[0].attn.k_proj.weight, slice(20, 20 + SAMPLE_STRIDE)
        k.data.view(-1)[span] = new["blocks.0.attn.k_proj.weight"].view(-1)[span]
    else:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if write == "copy_":
                    p.copy_(new[name])
                elif write == ".data =":
                    p.data = new[name].clone()
                else:
                    p.data.copy_(new[name])
    fresh = small().eval()
    fresh.load_state_dict(model.state_dict())  # the same weights, nothing kept
    after, expected = passes(model), passes(fresh)
    assert not torch.equal(before[0], after[0])
    assert torch.equal(after[0], expected[0]) and torch.equal(after[1], expected[1]) and after[2] == expected[2]


@pytest.mark.parametrize("autocast", [False, True])
def test_rms_norm_written_out_is_the_composite(autocast):
    torch.manual_seed(0)
    weight = torch.empty(16).uniform_(0.5, 1.5).requires_grad_()
    x = torch.randn(3, 5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = ops.rms_norm(x, weight, 1e-5)
        ref = ops.rms_norm(x, weight, 1e-5, plain=True)
    # Under autocast the output is already in bf16, rounded as the next matmul would round it.
    assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
    tol = 1e-2 if autocast else 1e-6  # (one bf16 step, where an fp32 rounding tips the cast)
    assert torch.allclose(out.float(), ref.to(out.dtype).float(), rtol=tol, atol=tol)
    g = torch.randn(out.shape).to(out.dtype)
    got = torch.autograd.grad(out, (x, weight), g)
    want = torch.autograd.grad(ref, (x, weight), g.float())
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_and_rope_written_out_are_the_composites(dtype):
    torch.manual_seed(0)
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    gate = torch.randn(2, 7, 6, dtype=dtype, requires_grad=True)
    up = torch.randn(2, 7, 6, dtype=dtype, requires_grad=True)
    qk = torch.randn(2, 7, 6, 8, dtype=dtype)[:, :, :5].requires_grad_()  # a slice, as of the fused qkv
    cos, sin = small().rope.span(0, 7)
    cos, sin = cos.transpose(1, 2), sin.transpose(1, 2)  # (1, T, 1, D)
    for fn, xs in ((ops.swiglu, (gate, up)), (lambda t, plain=False: ops.rope(t, cos, sin, plain=plain), (qk,))):
        out, ref = fn(*xs), fn(*xs, plain=True)
        assert out.dtype == dtype and torch.allclose(out, ref, atol=tol)
        g = torch.randn(out.shape, dtype=dtype)
        for a, b in zip(torch.autograd.grad(out, xs, g), torch.autograd.grad(ref, xs, g)):
            assert torch.allclose(a, b, atol=tol)
    # rope as the layers call it: apply_rope on (B, H, T, D) with the (B or 1, 1, T, D) tables
    q = torch.randn(2, 4, 7, 8)
    cos, sin = small().rope.span(0, 7)
    x1, x2 = q.chunk(2, dim=-1)
    assert torch.allclose(apply_rope(q, cos, sin), q * cos + torch.cat((-x2, x1), -1) * sin, atol=1e-6)
