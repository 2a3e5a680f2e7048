"""The transformer's parts, in the order a block uses them: norm, rotary positions, attention,
feed-forward network, block.

    RMSNorm(x)         = x / sqrt(mean(x^2) + eps) * g
    attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V          (per head; see `attention`)
    FFN(x)             = W_down (silu(W_gate x) * W_up x)      (SwiGLU; ReLU/GELU: W_down act(W_up x))
    block(x)           = x + attn(norm(x));  then  x + FFN(norm(x))   (pre-norm residual)

Attention is computed by PyTorch's fused `scaled_dot_product_attention` (SDPA), which never
holds the attention weights. The textbook lines in `attention` (scores, mask, softmax, weighted
sum) run only while a hook is attached to `attn.hook_attn_scores` or `attn.hook_pattern`
(model/hooks.py): that is how explain/ reads attention maps. Both compute the same formula.

The same block builds all three families: causal (decoder), bidirectional (encoder), and with
cross-attention to an encoder's output (the encoder-decoder's decoder), as in keras-hub's
TransformerDecoder that gains cross-attention when given the encoder's output. Self- and
cross-attention share their projections and the attention core (`AttentionHeads`, `attention`)
and differ only in where keys and values come from.

The conventions are Llama's (RMSNorm, rotate-half RoPE, no biases, q/k/v/o and gate/up/down
projections), so a decoder exports to `transformers.LlamaForCausalLM` with the same logits.
The q/k/v weights are separate parameters but run as one matmul, their weights concatenated at
compute time (model/fused.py); queries and keys are then rotated together. RMSNorm, rotary
positions and SwiGLU's gate have their gradients written out (model/ops.py).
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
from candorlm.model.fused import fused_linear, watched
from candorlm.model.hooks import HookPoint
from candorlm.model.ops import rms_norm, swiglu
from candorlm.model.ops import rope as rotate


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 whatever the input dtype; under
    autocast the output is in autocast's dtype, the dtype the next matmul casts it to anyway
    (model/ops.py). With a module hook on it (Opacus), the plain composite."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, plain=watched(self))


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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin (model/ops.py), in x's dtype, as Llama does: under bf16
    autocast an fp32 table would promote q and k to fp32 and cost a cast back."""
    return rotate(x, cos, sin)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
              dropout_p: float, hook_attn_scores: HookPoint, hook_pattern: HookPoint) -> torch.Tensor:
    """The attention core, shared by self- and cross-attention:  softmax(Q K^T / sqrt(d_k)) V  per head.

    q (B, H, T, D); k, v (B, Hkv, S, D), each key/value head serving H/Hkv query heads
    (grouped-query attention) -> (B, H, T, D). mask: None or boolean (B or 1, 1, T, S), True
    where a query may look; is_causal (with no mask): query t sees keys 0..t.

    Fused or textbook: SDPA computes this without ever holding the (T, S) weights. Only while a
    hook is attached to `hook_attn_scores` or `hook_pattern` do the lines below it run, as
    written, so that the hooks see (and may replace) the scores and the weights; the two paths
    agree to float rounding (tests/test_hooks.py).
    """
    grouped = k.shape[1] != q.shape[1]
    if not (hook_attn_scores.active or hook_pattern.active):
        # enable_gqa: SDPA serves each key/value head to its group of query heads without the
        # (B, H, S, D) copies that repeat_interleave makes.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                              dropout_p=dropout_p, enable_gqa=grouped)
    if grouped:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, S, D)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    elif is_causal:
        T, S = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).tril().logical_not(),
                                    float("-inf"))
    scores = hook_attn_scores(scores)
    pattern = hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))  # (B, H, T, S), rows sum to 1
    if dropout_p:
        pattern = F.dropout(pattern, dropout_p)
    return pattern @ v


class AttentionHeads(nn.Module):
    """What self- and cross-attention share: the q/k/v/o projections (Llama's names), the split
    into heads, the hook points, and the attention core. Each subclass's `forward` says where
    its keys and values come from; this class has none."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        # Hook points, as TransformerLens names them (see model/hooks.py). q, k, v are read before
        # the rotary positions; k and v only where they are computed (new positions, or the
        # encoder's output once per sequence), not where they come out of the KV cache.
        self.hook_q = HookPoint()  # (B, T, H, D)
        self.hook_k = HookPoint()  # (B, S_new, Hkv, D)
        self.hook_v = HookPoint()  # (B, S_new, Hkv, D)
        self.hook_attn_scores = HookPoint()  # (B, H, T, S), -inf where masked; attached, attention runs explicitly
        self.hook_pattern = HookPoint()  # (B, H, T, S); attached, attention runs explicitly
        self.hook_z = HookPoint()  # (B, T, H, D)
        if cfg.qk_norm:  # registered last: checkpoints without it keep their parameter order
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def heads(self, x: torch.Tensor, proj: nn.Linear, n_heads: int, hook: HookPoint) -> torch.Tensor:
        """(B, T, C) through `proj`, split into heads: (B, n_heads, T, D); `hook` sees (B, T, n_heads, D)."""
        B, T, _ = x.shape
        return hook(proj(x).view(B, T, n_heads, self.head_dim)).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool) -> torch.Tensor:
        """The core on (B, H, T, D) queries and (B, Hkv, S, D) keys/values, then the heads side by
        side through o_proj: (B, T, C)."""
        B, _, T, _ = q.shape
        y = attention(q, k, v, mask, is_causal, self.dropout if self.training else 0.0,
                      self.hook_attn_scores, self.hook_pattern)
        z = self.hook_z(y.transpose(1, 2))  # (B, T, H, D)
        return self.o_proj(z.reshape(B, T, self.n_heads * self.head_dim))


class Attention(AttentionHeads):
    """Self-attention: queries, keys and values from the same positions, rotated by those positions;
    with a KV cache, the keys and values of earlier positions come from the cache."""

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None, is_causal: bool = True,
                cache: KVCache | None = None, ve: torch.Tensor | None = None) -> torch.Tensor:
        """ve: (B, T, Hkv * D) added to the values, or None (model/value_embeds.py)."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        # Rotary positions in the projections' (B, T, heads, D) layout: the tables as (B or 1, T, 1, D).
        cos, sin = (t.transpose(1, 2) for t in rope)
        if watched(self.q_proj, self.k_proj, self.v_proj):  # module hooks must see each projection run
            q, k, v = (p(x).view(B, T, n, D) for p, n in ((self.q_proj, H), (self.k_proj, Hkv), (self.v_proj, Hkv)))
            qk = None
        else:  # one matmul for q, k and v (model/fused.py)
            store = getattr(cache, "fused", None)  # a generation's cache keeps the concatenation
            qk, v = fused_linear(x, (self.q_proj, self.k_proj, self.v_proj), store).view(
                B, T, H + 2 * Hkv, D).split((H + Hkv, Hkv), dim=2)
            q, k = qk.split((H, Hkv), dim=2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # (B, T, heads, D), before rotation
        if hasattr(self, "q_norm"):  # QK-norm: bounded attention logits whatever the weights' scale
            q, k = self.q_norm(q), self.k_norm(k)
        if qk is not None and not (self.hook_q.active or self.hook_k.active or hasattr(self, "q_norm")):
            # q and k are still side by side: rotated together, one set of operators for both (and
            # one two-way split, whose backward is a single cat, not zero-filled slices added up)
            q, k = apply_rope(qk, cos, sin).split((H, Hkv), dim=2)
        else:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if ve is not None:
            v = v + ve.to(v.dtype).view(B, T, Hkv, D)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D): the cached positions, then these
        return self.attend(q, k, v, mask, is_causal)


class CrossAttention(AttentionHeads):
    """Attention from the decoder's positions (queries) to the encoder's output (keys, values).

    With `memory_rope` (the config's `cross_attention_rope`, on by default), queries are rotated
    by their target position and keys by their source position, so a score depends on the offset
    between the two: an encoder that sees only relative positions cannot tell a decoder where in
    the source it is, and monotone tasks (pinyin to characters, transliteration) need exactly
    that. Without it, as in the original Transformer, only content decides where to attend. The
    keys and values of the encoder's output are computed once per sequence and kept in the cache
    (keys rotated).
    """

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                memory_rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q = self.heads(x, self.q_proj, self.n_heads, self.hook_q)  # (B, H, T, D)
        if memory_rope is not None and rope is not None:
            q = apply_rope(q, *rope)
        kv = cache.memory.get(self.layer_idx) if cache is not None else None
        if kv is None:
            k = self.heads(memory, self.k_proj, self.n_kv_heads, self.hook_k)  # (B, Hkv, S, D)
            v = self.heads(memory, self.v_proj, self.n_kv_heads, self.hook_v)
            if memory_rope is not None:
                k = apply_rope(k, *memory_rope)
            if cache is not None:
                cache.memory[self.layer_idx] = (k, v)
        else:
            k, v = kv
        return self.attend(q, k, v, memory_mask, is_causal=False)


class MLP(nn.Module):
    """The feed-forward network: SwiGLU (default), or the classic two-layer ReLU/GELU/ReLU² MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ff_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            # Two matmuls, not one on the concatenated weights as for q/k/v: the halves of one
            # output are strided views, on which the gated activation's passes ran slower than
            # the second matmul costs (bench/block_throughput.py's shapes, bf16: 2-5% faster so).
            return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
        if self.kind == "relu2":
            return self.down_proj(F.relu(self.up_proj(x)).square())
        act = F.relu if self.kind == "relu" else F.gelu
        return self.down_proj(act(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then feed-forward, each added to the residual stream.

    One block serves all three families: causal self-attention (decoder), bidirectional
    self-attention (encoder: is_causal=False), and, built with `cross_attention=True` and given
    the encoder's output as `memory`, a cross-attention sub-layer between the two (the
    encoder-decoder's decoder):  x + self_attn(norm(x));  x + cross_attn(norm(x), memory);  x + FFN(norm(x)).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, cross_attention: bool = False):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()  # all (B, T, C)
        if cross_attention:
            self.cross_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.cross_attn = CrossAttention(cfg, layer_idx)
            self.hook_cross_out, self.hook_resid_cross = HookPoint(), HookPoint()  # (B, T, C)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None, is_causal: bool = True,
                cache: KVCache | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None,
                memory_rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                ve: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.attn_norm(x), rope, mask, is_causal, cache, ve))
        x = self.hook_resid_mid(x + self.dropout(attn_out))
        if memory is not None:
            cross_out = self.hook_cross_out(self.cross_attn(self.cross_norm(x), memory, memory_mask, cache,
                                                            rope, memory_rope))
            x = self.hook_resid_cross(x + self.dropout(cross_out))
        mlp_out = self.hook_mlp_out(self.mlp(self.mlp_norm(x)))
        return self.hook_resid_post(x + self.dropout(mlp_out))


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) 1/0 mask of real keys -> (B, 1, 1, S) boolean mask for SDPA (None stays None)."""
    return None if attention_mask is None else attention_mask[:, None, None, :].bool()
