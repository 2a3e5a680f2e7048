"""The transformer's parts, in the order a block uses them: norm, rotary positions, attention,
feed-forward network, block.

    attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V          (per head; SDPA computes it)
    FFN(x)             = W_down (silu(W_gate x) * W_up x)      (SwiGLU; ReLU/GELU: W_down act(W_up x))
    block(x)           = x + attn(norm(x));  then  x + FFN(norm(x))   (pre-norm residual)

The conventions are Llama's (RMSNorm, rotate-half RoPE, no biases, q/k/v/o and gate/up/down
projections), so a decoder exports to `transformers.LlamaForCausalLM` with the same logits.
Shapes: B batch, T query length, S key length (cache included), H heads, Hkv key/value heads,
D head dim, C model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.hooks import HookPoint


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


class RotaryEmbedding(nn.Module):
    """Rotary position embeddings: cos/sin tables for positions 0..max_seq_len-1."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (max_seq_len, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (max_seq_len, D)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (B, T) -> cos, sin: (B, 1, T, D), broadcast over heads
        return self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)

    def span(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (1, 1, T, D) for positions start..start+length-1: one table shared by every
        row of a batch, instead of a (B, 1, T, D) copy per row."""
        return self.cos[None, None, start:start + length], self.sin[None, None, start:start + length]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # In x's dtype, as Llama does: under bf16 autocast an fp32 table would promote q and k to
    # fp32 and cost a cast back (a profile showed those copies at 6% of a training step).
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention with rotary positions and an optional KV cache."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.hook_pattern = HookPoint()  # (B, H, T, S); attached, it makes attention explicit
        self.hook_z = HookPoint()  # (B, T, H, D)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None, is_causal: bool = True,
                cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D)
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        if self.hook_pattern.active:
            y = self._explicit_attention(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                               dropout_p=self.dropout if self.training else 0.0)
        z = self.hook_z(y.transpose(1, 2))  # (B, T, H, D)
        return self.o_proj(z.reshape(B, T, self.n_heads * self.head_dim))

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        """softmax(QK^T / sqrt(d_k)) V with SDPA's masking, exposing the weights to hook_pattern."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        elif is_causal:
            T, S = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).tril().logical_not(),
                                        float("-inf"))
        pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))
        if self.training and self.dropout:
            pattern = F.dropout(pattern, self.dropout)
        return pattern @ v


class MLP(nn.Module):
    """The feed-forward network: SwiGLU (default), or the classic two-layer ReLU/GELU MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ff_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        act = F.relu if self.kind == "relu" else F.gelu
        return self.down_proj(act(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then feed-forward, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()  # all (B, T, C)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None, is_causal: bool = True,
                cache: KVCache | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.attn_norm(x), rope, mask, is_causal, cache))
        x = self.hook_resid_mid(x + self.dropout(attn_out))
        mlp_out = self.hook_mlp_out(self.mlp(self.mlp_norm(x)))
        return self.hook_resid_post(x + self.dropout(mlp_out))
