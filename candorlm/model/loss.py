"""The language-modelling losses: next-token cross-entropy on logits (`lm_loss`), and the output
layer and the cross-entropy in one pass, a chunk of tokens at a time (`linear_cross_entropy`,
`token_losses`).

The plain way (`lm_loss(model(x), y)`) materialises the logits of every token, (B*T, vocab),
then an fp32 copy of them, their log-softmax, and in the backward pass a zero-filled gradient
and the log-softmax gradient: five arrays of B*T*vocab floats (67 MB each for 2048 tokens and an
8k vocabulary) streamed through memory. On a CPU that traffic cost more than the output layer's
matmul (a profile of the 256-wide, 8k-vocabulary shape: log-softmax forward and backward, the
fills and copies, 24% of the training step against 24% for all matmuls together).

Here the loss takes the final hidden states and the output weight, and for each chunk of
tokens computes the logits, the loss and, at once, the gradient of the loss with respect to
those logits (softmax - one-hot); it multiplies that straight into the gradients of the hidden
states and of the weight. A chunk's logits stay in cache and are dropped before the next chunk.
The backward pass only scales the stored gradients by the incoming one (the loss is the last
node of the graph, so that is a multiplication by 1). The idea is Liger Kernel's "fused linear
cross entropy" (Hsu et al. 2024), written here with plain PyTorch ops.

Logit soft-capping (`softcap` c > 0, `model.logit_softcap`): each logit z becomes c * tanh(z / c)
before the softmax, so no logit grows past +-c; the gradient with respect to z is the capped
one's times 1 - tanh(z / c)^2, applied to the chunk in place.

Numerics: in fp32 the loss and the gradients agree with `lm_loss` to rounding (about 1e-7
relative; the sums are taken in another order). Under bf16 autocast the matmuls run in bf16
as in the plain path, and the softmax and the loss in fp32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# Tokens per chunk: large enough that the matmuls stay efficient and the weight's gradient is
# accumulated over few chunks (each accumulation casts and adds a vocab x C array), small enough
# that a chunk's logits stay bounded: about CHUNK_LOGITS logits (16 MB in bf16), so 1,024 tokens
# at an 8k vocabulary, 256 at 32k and more. Measured interleaved on 2 shared cores (bench/
# block_throughput.py's shapes, bf16): 1,024 tokens trained 6-7% faster than 256 at d128-d256
# and no slower at d64; a whole 2,048-token batch was no faster than 1,024.
CHUNK_LOGITS = 1 << 23
CHUNK_TOKENS = 256  # the least, whatever the vocabulary


def chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk for this vocabulary (see CHUNK_LOGITS)."""
    return max(CHUNK_TOKENS, CHUNK_LOGITS // max(1, vocab_size))


def cap_logits(logits: torch.Tensor, softcap: float) -> torch.Tensor:
    """c * tanh(logits / c) (soft-capping, Gemma 2 and modded-nanoGPT); softcap 0: the logits as they are."""
    return logits if not softcap else torch.tanh(logits / softcap) * softcap


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
            reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in fp32 (logits may be bf16 under autocast): logits (..., V) and
    targets (...), `ignore_index` marking targets that do not count."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                ignore_index: int, compute_dtype: torch.dtype, chunk: int, softcap: float = 0.0) -> torch.Tensor:
        n_tokens = hidden.shape[0]
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        # Mean over the tokens that count; a batch where none counts gives 0, not NaN.
        scale = 1.0 / valid.sum().clamp(min=1).to(torch.float32)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # Pretraining: every token counts, no mask to apply per chunk. Asked on the CPU only (on a
        # GPU the answer would wait for the device; on the meta device there is none).
        every_token_counts = need_grad and hidden.device.type == "cpu" and bool(valid.all())
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        # Training under bf16 autocast: the softmax kernel reads the chunk's logits in bf16,
        # computes in fp32 and writes the probabilities in bf16, the matmuls' dtype: one pass over
        # the logits, where an fp32 copy, log-softmax, exp and a cast back took four (on a CPU the
        # casts were the loss's costliest operators). The loss is -log of the target's probability:
        # bf16 rounds a probability by at most 0.2%, 0.002 nats, less than the bf16 logits
        # themselves carry. Otherwise (fp32, fp16 whose range would underflow, or no gradient)
        # the log-softmax in fp32, as written; so too with soft-capping, whose tanh wants fp32.
        reduced = need_grad and compute_dtype == torch.bfloat16 and not softcap
        rows = torch.arange(min(chunk, n_tokens), device=hidden.device)
        minus_one = torch.full(rows.shape, -1.0, dtype=compute_dtype, device=hidden.device)
        for start in range(0, n_tokens, chunk):
            end = min(start + chunk, n_tokens)
            t, keep = safe_targets[start:end, None], valid[start:end]
            if reduced:
                g = torch.softmax(h[start:end] @ w.t(), dim=-1)  # (n, V), compute_dtype
                # (a probability that underflows counts as about 87 nats, the log of fp32's smallest)
                nll = -g.gather(1, t).squeeze(1).float().clamp_min(torch.finfo(torch.float32).tiny).log()
            else:
                logits = (h[start:end] @ w.t()).float()  # (n, V)
                if softcap:
                    tanh = logits.div_(softcap).tanh_()
                    logits = tanh * softcap
                logp = torch.log_softmax(logits, dim=-1)
                nll = -logp.gather(1, t).squeeze(1)
            total += torch.where(keep, nll, 0.0).sum()
            if need_grad:
                # d(loss)/d(logits) = (softmax - one-hot) / tokens; ignored tokens are masked on the
                # narrow side (hidden states, width C) rather than on the logits (width V).
                if softcap:  # through the cap: d(c tanh(z/c))/dz = 1 - tanh^2
                    g = logp.exp_()
                    g.index_put_((rows[:end - start], t[:, 0]), minus_one[:end - start].float(), accumulate=True)
                    g = g.mul_(tanh.square_().neg_().add_(1.0)).to(compute_dtype)
                else:
                    if not reduced:
                        g = logp.exp_().to(compute_dtype)
                    # minus one at each target: index_put_ (scatter_add_ copies a bf16 chunk twice)
                    g.index_put_((rows[:end - start], t[:, 0]), minus_one[:end - start], accumulate=True)
                if every_token_counts:
                    h_kept = h[start:end]
                    torch.mm(g, w, out=grad_h[start:end])
                else:
                    h_kept = h[start:end] * keep[:, None].to(compute_dtype)
                    grad_h[start:end] = (g @ w) * keep[:, None].to(compute_dtype)
                if compute_dtype == torch.float32:
                    torch.addmm(grad_w, g.t(), h_kept, out=grad_w)  # (addmm_ is invisible to torch's FLOP counter)
                else:
                    grad_w += (g.t() @ h_kept).float()
        if need_grad:
            grad_h.mul_(scale.to(grad_h.dtype))
            grad_w.mul_(scale)
            ctx.save_for_backward(grad_h, grad_w)
        ctx.input_dtypes = (hidden.dtype, weight.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.input_dtypes
        dh = (grad_h * grad_out.to(grad_h.dtype)).to(h_dtype) if ctx.needs_input_grad[0] else None
        dw = (grad_w * grad_out).to(w_dtype) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk: int | None = None, softcap: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy of `hidden @ weight.T` (soft-capped at `softcap` when > 0)
    against `targets`, without ever
    holding all the logits. hidden (..., C), weight (V, C), targets (...) with `ignore_index`
    marking tokens that do not count. Follows autocast: bf16 matmuls inside a bf16 region.
    chunk: tokens per chunk (default: `chunk_tokens` of the vocabulary)."""
    device_type = hidden.device.type
    has_autocast = torch.amp.is_autocast_available(device_type)
    if has_autocast and torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    # The matmuls below pick their dtype themselves; autocast must not cast them again.
    with torch.autocast(device_type, enabled=False) if has_autocast else contextlib.nullcontext():
        return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                         ignore_index, compute_dtype, chunk or chunk_tokens(weight.shape[0]), softcap)


@torch.no_grad()
def token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                 chunk: int = CHUNK_TOKENS, softcap: float = 0.0) -> torch.Tensor:
    """Each token's cross-entropy in fp32 (0 where the target is ignore_index), shaped like
    targets, without holding all the logits: for evaluation, where no gradient is needed."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    out = torch.empty(t.shape, dtype=torch.float32, device=hidden.device)
    for start in range(0, t.numel(), chunk):
        end = min(start + chunk, t.numel())
        logits = cap_logits(F.linear(h[start:end], weight).float(), softcap)
        keep = t[start:end] != ignore_index
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, torch.where(keep, t[start:end], 0)[:, None]).squeeze(1)
        out[start:end] = torch.where(keep, nll, 0.0)
    return out.view(targets.shape)
