"""The "why" tools are real: the explicit attention pattern is the model's, gradient x input is
the gradient's first-order estimate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.model import DecoderLM
from candorlm.serve.why import attention_pattern, explain_token, forward_keeping_attention_input


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
                                 max_seq_len=32)).eval()


IDS = [1, 17, 42, 5, 63, 8, 29, 11]


def test_the_walked_forward_pass_is_the_model(model):
    ids = torch.tensor([IDS])
    with torch.no_grad():
        logits, _, _ = forward_keeping_attention_input(model, model.tok_emb(ids), layer=1)
        assert torch.allclose(logits, model(ids), atol=1e-5)


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3), (2, 1)])
def test_the_pattern_weights_the_values_exactly_as_the_model_does(model, layer, head):
    """pattern @ V for the head equals the head's output of scaled_dot_product_attention."""
    with torch.no_grad():
        emb = model.tok_emb(torch.tensor([IDS]))
        _, h, rope = forward_keeping_attention_input(model, emb, layer)
        pattern = attention_pattern(model, h, rope, layer, head)[0]  # (T, T)
        attn = model.blocks[layer].attn
        T, D = len(IDS), attn.head_dim
        from candorlm.model.layers import apply_rope
        q = apply_rope(attn.q_proj(h).view(1, T, attn.n_heads, D).transpose(1, 2), *rope)
        k = apply_rope(attn.k_proj(h).view(1, T, attn.n_kv_heads, D).transpose(1, 2), *rope)
        v = attn.v_proj(h).view(1, T, attn.n_kv_heads, D).transpose(1, 2)
        group = attn.n_heads // attn.n_kv_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)[0, head]
    assert torch.allclose(pattern @ v[0, head], sdpa, atol=1e-5)
    assert torch.allclose(pattern.sum(-1), torch.ones(T))
    assert torch.all(pattern.triu(1) == 0)


def test_gradient_x_input_matches_a_finite_difference(model):
    """score_i = e_i . dlogit/de_i is the derivative of the logit as e_i is scaled by (1 + a), at a = 0."""
    position = 6
    result = explain_token(model, IDS, position, layer=0, head=0)
    assert len(result.attribution) == position
    emb = model.tok_emb(torch.tensor([IDS])).detach().double()
    model64 = DecoderLM(model.cfg).double().eval()  # (its RMSNorm still rounds through fp32)
    model64.load_state_dict(model.state_dict())
    eps = 1e-2  # central differences: error O(eps^2), well above fp32 rounding
    for i in range(position):
        def logit(a, i=i):
            scaled = emb.clone()
            scaled[0, i] *= 1 + a
            with torch.no_grad():
                out, _, _ = forward_keeping_attention_input(model64, scaled, 0)
            return out[0, position - 1, IDS[position]].item()
        numeric = (logit(eps) - logit(-eps)) / (2 * eps)
        assert result.attribution[i] == pytest.approx(numeric, rel=1e-2, abs=1e-5)
    assert any(abs(s) > 1e-4 for s in result.attribution)


def test_probability_and_rank_are_the_models(model):
    result = explain_token(model, IDS, 4, layer=2, head=2)
    with torch.no_grad():
        probs = model(torch.tensor([IDS]))[0, 3].softmax(-1)
    assert result.probability == pytest.approx(probs[IDS[4]].item(), rel=1e-4)
    assert result.rank == int((probs > probs[IDS[4]]).sum()) + 1


@pytest.mark.parametrize("kwargs,match", [(dict(position=0), "follow"), (dict(position=3, layer=3), "layer 3"),
                                          (dict(position=3, head=4), "head 4")])
def test_bad_choices_are_clear_errors(model, kwargs, match):
    with pytest.raises(CandorError, match=match):
        explain_token(model, IDS, **kwargs)
