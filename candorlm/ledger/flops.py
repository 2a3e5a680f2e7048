"""Analytic FLOP counts: what a model's forward and backward passes cost per token.

A matmul of (m x k) by (k x n) is 2mkn FLOPs. Per token, a decoder's forward pass costs
2 x (weights used in matmuls) plus attention's two matmuls (Q K^T and weights x V), each
2 x seq_len x (heads x head_dim) per layer, counted over the whole sequence as
`torch.utils.flop_counter` counts SDPA (no discount for the causal mask). Training is forward
plus backward, and backward costs twice the forward (gradients for inputs and for weights).
Norms, activations, softmax and the optimizer are left out: they are a few percent at most.

Per token and layer, with d = d_model, h = heads x head_dim, kv = kv_heads x head_dim, f = the
MLP width and S the context length:

    attention projections   2 d (2h + 2kv)       (q, k, v, o)
    attention scores        2 S h  +  2 S h      (Q K^T, then weights x V)
    MLP                     2 d f x 3 (SwiGLU: gate, up, down) or x 2 (ReLU/GELU: up, down)
    output layer, once      2 d vocab            (tied or not; the embedding lookup is free)

This is the convention of Kaplan et al. (2020) and PaLM's MFU (Chowdhery et al. 2022): training
is 6 N + 12 L S d per token for N matmul weights. A test checks these numbers against
`torch.utils.flop_counter.FlopCounterMode` on real forward and backward passes.

An encoder (`arch = "encoder"`) costs what a decoder of its shape costs: bidirectional attention
does the same matmuls, and the masked-LM head is the same output layer. An encoder-decoder
(`arch = "seq2seq"`) is counted per target token, for a source of `src_len` tokens (by default as
long as the target, as in denoising pretraining): its encoder's layers run on the source, and
each decoder layer adds cross-attention: q and o projections on the target, k and v
projections on the source, and two score matmuls over the source.
"""

from __future__ import annotations

from candorlm.config import ModelConfig
from candorlm.errors import CandorError


ARCHS = ("decoder", "encoder", "seq2seq")


def _check_arch(cfg: ModelConfig, archs: tuple[str, ...] = ARCHS) -> None:
    if cfg.arch not in archs:
        raise CandorError(f"no FLOP formula for model.arch = '{cfg.arch}'; candorlm.ledger.flops knows: "
                          f"{', '.join(archs)}")


def _block_params(cfg: ModelConfig) -> tuple[int, int]:
    """Matmul weights of one block's self-attention and of its MLP."""
    attn = cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.kv_heads)
    return attn, (3 if cfg.mlp == "swiglu" else 2) * cfg.d_model * cfg.ff_dim


def _encoder_layers(cfg: ModelConfig) -> int:
    return cfg.n_encoder_layers or cfg.n_layers


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in matmuls (the embedding lookup is not one; the output layer is)."""
    _check_arch(cfg)
    attn, mlp = _block_params(cfg)
    n = cfg.n_layers * (attn + mlp) + cfg.d_model * cfg.vocab_size
    if cfg.arch == "seq2seq":
        n += _encoder_layers(cfg) * (attn + mlp) + cfg.n_layers * attn  # the encoder; cross-attention
    return n


def forward_breakdown(cfg: ModelConfig, seq_len: int, src_len: int | None = None) -> dict[str, int]:
    """Forward FLOPs per token, by part, for a token that attends to `seq_len` positions (and, for
    an encoder-decoder, to a source of `src_len` tokens, by default `seq_len`)."""
    _check_arch(cfg)
    L, d, hd = cfg.n_layers, cfg.d_model, cfg.head_dim
    attn, mlp = _block_params(cfg)
    parts = {
        "attention_projections": L * 2 * attn,
        "attention_scores": L * 2 * (2 * seq_len * cfg.n_heads * hd),
        "mlp": L * 2 * mlp,
        "output_layer": 2 * d * cfg.vocab_size,
    }
    if cfg.arch == "seq2seq":
        src = seq_len if src_len is None else src_len
        ratio = src / seq_len  # source tokens per target token
        parts["cross_attention"] = L * (2 * d * hd * 2 * cfg.n_heads  # q and o, on the target
                                        + round(ratio * 2 * d * hd * 2 * cfg.kv_heads)  # k and v, on the source
                                        + 2 * (2 * src * cfg.n_heads * hd))  # scores and weights x V
        parts["encoder"] = round(ratio * _encoder_layers(cfg) * 2 * (attn + mlp + 2 * src * cfg.n_heads * hd))
    return parts


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, src_len: int | None = None) -> int:
    """Forward FLOPs per token; for a full training sequence, seq_len is its length."""
    return sum(forward_breakdown(cfg, seq_len, src_len).values())


def train_flops_per_token(cfg: ModelConfig, seq_len: int, src_len: int | None = None) -> int:
    """Forward plus backward (twice the forward) per token of a training sequence of seq_len."""
    return 3 * forward_flops_per_token(cfg, seq_len, src_len)


def generation_flops(cfg: ModelConfig, prompt_len: int, new_tokens: int) -> int:
    """FLOPs to read a prompt and generate `new_tokens` after it with a KV cache (one row).

    The prompt's forward pass gives the first new token; each later one costs a one-token
    step whose attention spans the cache, prompt_len + j positions for the j-th step."""
    _check_arch(cfg, ("decoder",))
    if new_tokens <= 0:
        return 0
    prefill = prompt_len * forward_flops_per_token(cfg, prompt_len)
    steps = new_tokens - 1
    mean_context = prompt_len + (steps + 1) / 2  # attention is linear in context: the mean gives the sum
    per_step = 2 * matmul_params(cfg) + cfg.n_layers * 2 * (2 * mean_context * cfg.n_heads * cfg.head_dim)
    return int(round(prefill + steps * per_step))
