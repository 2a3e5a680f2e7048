import pytest
import torch

from candorlm.config import ModelConfig, resolve
from candorlm.model import DecoderLM, lm_loss


def small(**kw):
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return DecoderLM(ModelConfig(**base))


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1}, {"mlp": "gelu"}, {"mlp": "relu"},
                                {"tie_embeddings": False}])
def test_forward_backward_shapes(kw):
    torch.manual_seed(0)
    m = small(**kw)
    x = torch.randint(0, 97, (3, 16))
    logits = m(x)
    assert logits.shape == (3, 16, 97)
    lm_loss(logits[:, :-1], x[:, 1:]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_attention_is_causal():
    torch.manual_seed(0)
    m = small().eval()
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 97
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    m = small(n_kv_heads=2).eval()
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = m(x)
        cache = m.make_cache(2, 20)
        parts = [m(x[:, :7], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(7, 20)]
    assert torch.allclose(full, torch.cat(parts, dim=1), atol=1e-5)


def test_left_padding_gives_the_same_logits():
    torch.manual_seed(0)
    m = small().eval()
    x = torch.randint(1, 97, (1, 10))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], dim=1).long()
    with torch.no_grad():
        assert torch.allclose(m(x), m(padded, attention_mask=mask)[:, 3:], atol=1e-5)


def test_tied_embeddings_share_storage():
    m = small()
    assert m.lm_head.weight is m.tok_emb.weight
    assert small(tie_embeddings=False).lm_head.weight is not small(tie_embeddings=False).tok_emb.weight


def test_sequence_longer_than_maximum_is_refused():
    m = small()
    with pytest.raises(ValueError, match="exceeds"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_preset_sizes():
    def params(preset, vocab):
        cfg = resolve(preset).model.model_copy(update={"vocab_size": vocab})
        with torch.device("meta"):
            return DecoderLM(cfg).num_params()

    assert 0.8e6 < params("tiny", 4096) < 2.5e6
    assert 7e6 < params("small", 8192) < 13e6
    assert 110e6 < params("base", 50257) < 140e6
    assert params("large", 50257) > 300e6
