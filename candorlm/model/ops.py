"""The block's elementwise operators with their gradients written out: RMSNorm, SwiGLU's gated
activation, rotary positions.

On a CPU each operator is a pass over the activations, and autograd replays a composite
operator by operator: RMSNorm's pow, mean, add, rsqrt, two products and a cast, SwiGLU's
product and a `cat` to join the two halves' gradients, rotate-half's negation and `cat`.
Written out, each takes fewer passes forward and backward, writes its gradient straight into
place, and RMSNorm writes its output in the dtype the next matmul casts it to (autocast's).
The numbers are the composites' to float rounding (tests/model/test_fused.py compares each).

Under torch.func's transforms (Opacus' per-sample gradients vmap copies of the layers), an
autograd.Function would need a vmap rule; under torch.compile the composites fuse better. There,
and wherever the caller asks (`plain`), each runs as its composite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def transformed(x: torch.Tensor) -> bool:
    """True inside a torch.func transform (vmap, grad), or while torch.compile traces (its own
    fusion does better than these, from the composites): the written-out operators step aside."""
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(x)


# --------------------------------------------------------------------------- RMSNorm
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, plain: bool = False) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32; in autocast's dtype under autocast."""
    if plain or transformed(x):
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    if out_dtype == torch.float32 and torch.amp.is_autocast_available(x.device.type) \
            and torch.is_autocast_enabled(x.device.type):
        out_dtype = torch.get_autocast_dtype(x.device.type)
    if not _needs_grad(x, weight):  # (generation: no autograd.Function to dispatch per token)
        return _rms_norm(x, weight, eps, out_dtype)[0]
    return _RMSNorm.apply(x, weight, eps, out_dtype)[0]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
              out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))  # (..., 1), fp32
    normed = (xf * rstd).to(x.dtype)  # as the composite rounds it, for a bf16 model
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    return torch.mul(normed, weight, out=out), normed, rstd


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, eps: float,  # type: ignore[override]
                out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _rms_norm(x, weight, eps, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, weight, _, _ = inputs
        _, normed, rstd = output
        ctx.save_for_backward(normed, rstd, weight)
        ctx.x_dtype = x.dtype
        ctx.mark_non_differentiable(normed, rstd)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_: torch.Tensor):  # type: ignore[override]
        normed, rstd, weight = ctx.saved_tensors
        g, n = grad.float(), normed.float()
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (g * n).sum(tuple(range(g.dim() - 1))).to(weight.dtype)
        gn = g * weight.float()
        # d/dx [x * rstd] applied to gn: rstd * (gn - n * mean(gn * n))
        grad_x = torch.addcmul(gn, n, (gn * n).mean(-1, keepdim=True), value=-1.0).mul_(rstd).to(ctx.x_dtype)
        return grad_x, grad_w, None, None


# --------------------------------------------------------------------------- SwiGLU
def swiglu(gate_up: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """silu(gate) * up, for gate and up the two halves of gate_up's last dimension."""
    if plain or transformed(gate_up) or not _needs_grad(gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    return _SwiGLU.apply(gate_up)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(gate_up, act)
        return act * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        gate_up, act = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_in = torch.empty_like(gate_up)  # both halves written in place: no cat of the two
        grad_gate, grad_up = grad_in.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_in


# --------------------------------------------------------------------------- rotary positions
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1) for x's two halves (Llama's
    rotate-half RoPE); cos and sin broadcast against x and hold each frequency twice."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if plain or transformed(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin
    # With s = (-sin1, sin2) (a table: small): rotate_half(x) * sin = swap(x) * s, so
    # y = x * cos + swap(x) * s, and the gradient is  g * cos + swap(g * s) = g * cos + swap(g) * swap(s).
    s1, s2 = sin.chunk(2, dim=-1)
    signed = torch.cat((-s1, s2), dim=-1)
    if not _needs_grad(x):
        return torch.addcmul(x * cos, _swap_halves(x), signed)
    return _Rope.apply(x, cos, signed)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """(x2, x1): a permutation that is its own inverse (and transpose)."""
    return torch.roll(x, x.shape[-1] // 2, dims=-1)


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, signed)
        return torch.addcmul(x * cos, _swap_halves(x), signed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        cos, signed = ctx.saved_tensors
        return torch.addcmul(grad * cos, _swap_halves(grad), _swap_halves(signed)), None, None
