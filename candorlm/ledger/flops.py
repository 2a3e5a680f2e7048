"""Analytic FLOP counts: what a model's forward and backward passes cost per token.

A matmul of (m x k) by (k x n) is 2mkn FLOPs. Per token, a decoder's forward pass costs
2 x (weights used in matmuls) plus attention's two matmuls (Q K^T and weights x V), each
2 x seq_len x (heads x head_dim) per layer, counted over the whole sequence as
`torch.utils.flop_counter` counts SDPA (no discount for the causal mask). Training is forward
plus backward, and backward costs twice the forward (gradients for inputs and for weights).
Norms, activations, softmax and the optimizer are left out: they are a few percent at most.
"""

from __future__ import annotations

from candorlm.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in matmuls (the embedding lookup is not one; the output layer is)."""
    attn = cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.kv_heads)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * cfg.d_model * cfg.ff_dim
    return cfg.n_layers * (attn + mlp) + cfg.d_model * cfg.vocab_size


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    attention = cfg.n_layers * 2 * (2 * seq_len * cfg.n_heads * cfg.head_dim)
    return 2 * matmul_params(cfg) + attention


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    return 3 * forward_flops_per_token(cfg, seq_len)
