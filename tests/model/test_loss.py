"""The chunked output layer + cross-entropy (model/loss.py) is the plain one: the same loss and
the same gradients, whether every token counts or some are ignored, in fp32 and under bf16
autocast."""

import pytest
import torch
import torch.nn.functional as F

from candorlm.model.loss import linear_cross_entropy, token_losses


def _inputs(ignored: bool):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 37, 16, generator=g, requires_grad=True)
    weight = (torch.randn(50, 16, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, 50, (3, 37), generator=g)
    if ignored:
        targets[0, :5] = -100
        targets[2, 30:] = -100
    return hidden, weight, targets


def _plain(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float().reshape(-1, 50), targets.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("ignored", [False, True])
def test_loss_and_gradients_are_the_plain_ones_in_fp32(ignored):
    hidden, weight, targets = _inputs(ignored)
    loss = linear_cross_entropy(hidden, weight, targets, chunk=16)  # chunks of 16 over 111 tokens: a ragged last
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref = _plain(hidden, weight, targets)
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    assert abs(loss.item() - ref.item()) < 1e-6
    assert torch.allclose(gh, rh, atol=1e-7) and torch.allclose(gw, rw, atol=1e-7)
    if ignored:
        assert gh[0, :5].abs().max() == 0  # an ignored token's hidden state gets no gradient


@pytest.mark.parametrize("ignored", [False, True])
def test_under_bf16_autocast_they_agree_to_bf16_rounding(ignored):
    hidden, weight, targets = _inputs(ignored)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, chunk=16)
        ref = _plain(hidden, weight, targets)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    assert loss.dtype == torch.float32 and gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    assert abs(loss.item() - ref.item()) < 1e-3 * ref.item()
    for a, b in ((gh, rh), (gw, rw)):
        assert (a - b).norm() < 2e-2 * b.norm()


def test_token_losses_are_each_tokens_cross_entropy():
    hidden, weight, targets = _inputs(ignored=True)
    with torch.no_grad():
        each = token_losses(hidden, weight, targets, chunk=16)
        ref = F.cross_entropy(F.linear(hidden, weight).reshape(-1, 50), targets.reshape(-1), ignore_index=-100,
                              reduction="none").view(3, 37)
    assert torch.allclose(each, ref, atol=1e-6)
