"""Seq2SeqLM: the encoder-decoder of the original Transformer (Vaswani et al. 2017).

An encoder (bidirectional blocks) reads the source; a decoder (causal blocks that also
cross-attend to the encoder's output) writes the target one token at a time. Both stacks are
built from `layers.Block`, so they share the decoder-only model's conventions (pre-norm
RMSNorm, rotary positions in self-attention, SwiGLU, no biases); cross-attention uses no
positions. Departures from the 2017 model are those conventions, plus:
- the source and target share one vocabulary and one embedding matrix by default, tied to the
  output layer too; with `src_vocab_size` set, the source has its own embedding (separate
  vocabularies, for example pinyin syllables in and Chinese characters out);
- `n_encoder_layers` may differ from the decoder's `n_layers`.

Parameter names: `encoder.*` is an `EncoderLM` without its LM head; `tok_emb`, `blocks`,
`norm`, `lm_head` are the decoder's, named as in `DecoderLM`.
"""

from __future__ import annotations

import torch
from torch import nn

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.encoder import EncoderLM
from candorlm.model.layers import build_trunk, init_weights, padding_mask


class Seq2SeqLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (it is taken from the tokenizer when training)")
        self.shared_vocab = cfg.src_vocab_size == 0
        enc_cfg = cfg.model_copy(update={"n_layers": cfg.n_encoder_layers or cfg.n_layers,
                                         "vocab_size": cfg.src_vocab_size or cfg.vocab_size, "arch": "encoder"})
        self.encoder = EncoderLM(enc_cfg, lm_head=False)
        # The decoder's parts; its hook points are hook_embed, blocks.N.*, hook_norm, and the
        # encoder's encoder.hook_embed, encoder.blocks.N.*, encoder.hook_norm.
        build_trunk(self, cfg, cross_attention=True, tok_emb=self.encoder.tok_emb if self.shared_vocab else None)
        init_weights(self, cfg.init_std, cfg.n_layers + enc_cfg.n_layers)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (0 if self.shared_vocab else self.encoder.tok_emb.weight.numel())
        return n

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        cfg = self.cfg
        return KVCache(cfg.n_layers, batch_size, cfg.kv_heads, max_len or cfg.max_seq_len, cfg.head_dim,
                       self.tok_emb.weight.device)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output (B, S, d_model) for source ids (B, S), right-padded under attention_mask."""
        return self.encoder.hidden_states(input_ids, attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               memory_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) of the next target token at each decoder position.

        memory: the encoder's output (B, S, d_model); memory_mask (B, S): 1 for real source tokens.
        With a cache, decoder_input_ids are the new tokens only, and the cross-attention keys and
        values of `memory` are computed at the first call and reused.
        """
        B, T = decoder_input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.max_seq_len:
            raise ValueError(f"target of {past + T} tokens exceeds the model's maximum of {self.cfg.max_seq_len}")
        position_ids = torch.arange(past, past + T, device=decoder_input_ids.device).expand(B, T)
        rope = self.rope(position_ids)
        # Causal self-attention: the whole prefix during training, or one new token that sees the cache.
        is_causal = past == 0 and T > 1
        if past and T > 1:
            raise ValueError("with a cache, feed the decoder one token at a time")
        cross_mask = padding_mask(memory_mask)
        memory_rope = self.rope.span(0, memory.shape[1]) if self.cfg.cross_attention_rope else None
        x = self.hook_embed(self.tok_emb(decoder_input_ids))
        for block in self.blocks:
            x = block(x, rope, None, is_causal, cache, memory=memory, memory_mask=cross_mask, memory_rope=memory_rope)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.hook_norm(self.norm(x)))

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, vocab): the source input_ids (B, S) with its padding mask,
        and the target shifted right (starting with <|bos|>) as decoder_input_ids (B, T)."""
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask)
