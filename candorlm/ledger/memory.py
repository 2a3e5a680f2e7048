"""Memory before a run: what a training process will hold, counted from the model's shape, and
the resident memory this process measures (the estimate's runtime and workspace terms).

See candorlm.ledger.estimate for how the terms add up and how well they match real runs.
"""

from __future__ import annotations

import os
from typing import Any

from candorlm.config import ModelConfig
from candorlm.ledger.flops import matmul_params


def activation_bytes_per_token(cfg: ModelConfig, precision: str) -> int:
    """Bytes autograd keeps per token for the backward pass, all layers, in candorlm's decoder.

    Per layer, fp32: each RMSNorm keeps its input, its normalised output and the weighted output
    (3 x 4d), attention keeps q, k, v and its output (4 bytes each) and o_proj's input; the
    SwiGLU MLP keeps gate, silu(gate), up and their product (4 x 4f). Under bf16 autocast the
    weighted norm output is not kept but each linear keeps its own bf16 copy of its input, and
    attention and MLP tensors are 2 bytes."""
    d, f = cfg.d_model, cfg.ff_dim
    h, kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    mlp_tensors = 4 if cfg.mlp == "swiglu" else 2
    if precision == "bf16":
        attn = 8 * d + 3 * 2 * d + 2 * (2 * h + 2 * kv) + 2 * h + 4 * cfg.n_heads
        mlp = 8 * d + (2 if cfg.mlp == "swiglu" else 1) * 2 * d + mlp_tensors * 2 * f
    else:
        attn = 12 * d + 4 * (2 * h + 2 * kv) + 4 * h + 4 * cfg.n_heads
        mlp = 12 * d + mlp_tensors * 4 * f
    final_norm = 8 * d
    output_grad = (2 if precision == "bf16" else 4) * d  # the loss keeps d(loss)/d(hidden)
    return cfg.n_layers * (attn + mlp) + final_norm + output_grad


def memory_breakdown(cfg: ModelConfig, batch: int, seq_len: int, precision: str, runtime_bytes: int,
                     runtime_method: str) -> dict[str, dict[str, Any]]:
    from candorlm.model.loss import CHUNK_TOKENS

    params = param_count(cfg)
    tokens = batch * seq_len
    acts = activation_bytes_per_token(cfg, precision) * tokens
    # The output layer's working set: one chunk of logits in fp32 (logits, log-probs) and its
    # gradient in the compute dtype, plus the fp32 gradient of the output weight.
    chunk = min(CHUNK_TOKENS, tokens) * cfg.vocab_size * (8 + (2 if precision == "bf16" else 4))
    out_weight_grad = 4 * cfg.vocab_size * cfg.d_model
    casts = 2 * matmul_params(cfg) if precision == "bf16" else 0
    # During the backward pass one layer's activation gradients exist next to the saved tensors.
    backward_peak = activation_bytes_per_token(cfg, precision) // max(cfg.n_layers, 1) * tokens
    return {
        "weights": {"bytes": 4 * params, "how": f"4 bytes x {params:,} parameters (fp32)"},
        "gradients": {"bytes": 4 * params, "how": "4 bytes x parameters"},
        "optimizer_state": {"bytes": 8 * params, "how": "AdamW: two fp32 moments per parameter"},
        "activations": {"bytes": acts + chunk + out_weight_grad + casts + backward_peak,
                        "how": f"{activation_bytes_per_token(cfg, precision):,} bytes per token saved for backward x "
                               f"{tokens:,} tokens, one layer's gradients, the output layer's chunk"
                               + (", bf16 weight copies" if casts else "")},
        "runtime": {"bytes": runtime_bytes, "how": runtime_method},
    }


def param_count(cfg: ModelConfig) -> int:
    d, L = cfg.d_model, cfg.n_layers
    attn = d * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.kv_heads)
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.ff_dim
    emb = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return L * (attn + mlp + 2 * d) + d + emb


def process_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def runtime_baseline() -> tuple[int, str]:
    """What a training process holds before its model: measured here after loading what it loads."""
    import candorlm.training.trainer  # noqa: F401  (the trainer and everything it imports)
    try:
        import codecarbon  # noqa: F401  (the energy meter loads it when a run starts)
    except ImportError:
        pass
    return process_rss_bytes(), "measured: resident memory of this process with torch, the trainer and the energy meter loaded"


