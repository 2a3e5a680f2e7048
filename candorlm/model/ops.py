"""The block's elementwise operators with their gradients written out: RMSNorm, SwiGLU's gated
activation, rotary positions.

On a CPU each operator is a pass over the activations, and autograd replays a composite
operator by operator: RMSNorm's pow, mean, add, rsqrt, two products and a cast, rotate-half's
negation and `cat`, SwiGLU's three products. Written out, each takes fewer passes forward and
backward, and RMSNorm writes its output in the dtype the next matmul casts it to (autocast's).
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
    return _RMSNorm.apply(x, weight, eps, out_dtype)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
              out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, x * rstd in x's dtype, rstd)."""
    xf = x.float()
    # mean(x^2) from one reduction (no x^2 written out): ||x||^2 / C
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # (..., 1), fp32
    rstd = torch.rsqrt(norm.square_().div_(x.shape[-1]).add_(eps))
    normed = (xf * rstd).to(x.dtype)  # as the composite rounds it, for a bf16 model
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    return torch.mul(normed, weight, out=out), normed, rstd


class _RMSNorm(torch.autograd.Function):
    # One output: extra outputs (normed, rstd) would get zero-filled gradients in the backward pass.
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float,  # type: ignore[override]
                out_dtype: torch.dtype) -> torch.Tensor:
        out, normed, rstd = _rms_norm(x, weight, eps, out_dtype)
        ctx.save_for_backward(normed, rstd, weight)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        normed, rstd, weight = ctx.saved_tensors
        g, n, w = grad.float(), normed.float(), weight.float()
        C = g.shape[-1]
        gn_rows = (g * n).view(-1, C)  # g * n, row by row
        grad_w = gn_rows.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        # d/dx [x * rstd] applied to gw = g * w:  rstd * (gw - n * mean(gw * n)), and
        # mean(gw * n) = (g * n) @ w / C: a matrix-vector product, no third array written out
        dot = (gn_rows @ w).div_(C).view(*g.shape[:-1], 1)
        grad_x = torch.addcmul(g * w, n, dot, value=-1.0).mul_(rstd).to(ctx.x_dtype)
        return grad_x, grad_w, None, None


# --------------------------------------------------------------------------- SwiGLU
def swiglu(gate: torch.Tensor, up: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """silu(gate) * up."""
    if plain or transformed(gate) or not _needs_grad(gate, up):
        return F.silu(gate) * up
    return _SwiGLU.apply(gate, up)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        act = F.silu(gate)
        ctx.save_for_backward(gate, up, act)
        return act * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        gate, up, act = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad * up, gate), grad * act


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
    # (Writing each half in place instead, on half-width strided views, measured slower.)
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
