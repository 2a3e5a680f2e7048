"""Trunk: the parts that every candorlm model family has, and the pass through them.

    ids (B, T) -> tok_emb -> hook_embed -> blocks[0..L-1] -> norm -> hook_norm -> (lm_head) -> (B, T, vocab)

DecoderLM (causal blocks), EncoderLM (bidirectional blocks) and Seq2SeqLM (causal blocks that
also cross-attend to an encoder's output) are Trunks: each says in its own `__init__` which
trunk it builds, and in its forward pass which positions and mask the blocks get.

The attribute names are the checkpoints' parameter names (`tok_emb.weight`,
`blocks.0.attn.q_proj.weight`, ..., `norm.weight`, `lm_head.weight`, `encoder.*`) and the
modules are registered in the order every candorlm checkpoint has had since the first: an
optimizer state lists parameters in that order, so do not reorder them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.compiled import block_runner
from candorlm.model.hooks import HookPoint
from candorlm.model.layers import Block, RMSNorm, RotaryEmbedding
from candorlm.model.value_embeds import ValueEmbeds


class Trunk(nn.Module):
    """Token embedding, blocks, final norm, output layer and rotary tables, under `cfg`.

    encoder: an encoder-decoder's encoder; the blocks then cross-attend to its output, and it is
    registered first (its parameters come first in checkpoints and optimizer states).
    tok_emb: an embedding to share (an encoder-decoder with one vocabulary), instead of a new one.
    lm_head: False for a trunk without an output layer (an encoder inside an encoder-decoder).
    """

    def __init__(self, cfg: ModelConfig, *, encoder: Trunk | None = None, tok_emb: nn.Embedding | None = None,
                 lm_head: bool = True):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (it is taken from the tokenizer when training)")
        if encoder is not None:
            self.encoder = encoder
        self.cfg = cfg
        self.tok_emb = tok_emb if tok_emb is not None else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i, cross_attention=encoder is not None) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False) if lm_head else None
        if self.lm_head is not None and cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.hook_embed, self.hook_norm = HookPoint(), HookPoint()  # (B, T, C); see model/hooks.py
        if cfg.value_embeds:  # registered last: checkpoints without them keep their parameter order
            self.value_embeds = ValueEmbeds(cfg)
        init_weights(self, cfg.init_std, cfg.n_layers + (encoder.cfg.n_layers if encoder is not None else 0),
                     zero_out=cfg.zero_init_out)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, each counted once (a tied output layer is the embedding); non_embedding:
        without the token embeddings (the source's too, where it has its own)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:  # modules() yields a shared embedding once
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens (default: the
        model's context), for decoding one token at a time; an encoder has no use for one."""
        cfg = self.cfg
        return KVCache(cfg.n_layers, batch_size, cfg.kv_heads, max_len or cfg.max_seq_len, cfg.head_dim,
                       self.tok_emb.weight.device)

    def check_length(self, n_tokens: int, what: str = "sequence") -> None:
        if n_tokens > self.cfg.max_seq_len:
            raise ValueError(f"{what} of {n_tokens} tokens exceeds the model's maximum of {self.cfg.max_seq_len}")

    def run_blocks(self, input_ids: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   mask: torch.Tensor | None, is_causal: bool, cache: KVCache | None = None,
                   **cross: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Embed input_ids (B, T), run every block, apply the final norm: (B, T, C).

        rope: cos, sin for these positions; mask, is_causal: as `layers.attention` takes them;
        cross: memory, memory_mask, memory_rope for blocks with cross-attention. With a cache,
        the cache moves on by T positions once every block has written to it."""
        x = self.hook_embed(self.tok_emb(input_ids))
        ves = self.value_embeds(input_ids) if hasattr(self, "value_embeds") else [None] * len(self.blocks)
        for block, ve in zip(self.blocks, ves):
            # the block itself, or in a training pass of a compiled model the compiled function (model/compiled.py)
            x = block_runner(self, block, cache is not None)(x, rope, mask, is_causal, cache, ve=ve, **cross)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.hook_norm(self.norm(x))


def init_weights(model: nn.Module, init_std: float, n_layers: int, zero_out: bool = False) -> None:
    """Normal(0, init_std) for linear and embedding weights; GPT-2's depth scaling for the output
    projection of each residual branch (o_proj, down_proj): std / sqrt(2 * n_layers), or zero
    with `zero_out` (each block starts as the identity, as in modded-nanoGPT)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=init_std)
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            if zero_out:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=init_std / math.sqrt(2 * n_layers))
