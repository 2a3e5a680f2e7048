"""Seq2SeqLM: the encoder-decoder of the original Transformer (Vaswani et al. 2017).

An encoder (bidirectional blocks) reads the source; a decoder (causal blocks that also
cross-attend to the encoder's output) writes the target one token at a time. Both stacks are
built from `layers.Block`, so they share the decoder-only model's conventions (pre-norm
RMSNorm, rotary positions, SwiGLU, no biases). Departures from the 2017 model are those
conventions, plus:
- cross-attention has rotary positions too, on by default (`model.cross_attention_rope`):
  queries rotated by their target position, keys by their source position, so where to look
  in the source may depend on where the decoder is in the target (see `layers.CrossAttention`);
  off, as in 2017, only content decides;
- the source and target share one vocabulary and one embedding matrix by default, tied to the
  output layer too; with `src_vocab_size` set, the source has its own embedding (separate
  vocabularies, for example pinyin syllables in and Chinese characters out);
- `n_encoder_layers` may differ from the decoder's `n_layers`.

Parameter names: `encoder.*` is an `EncoderLM` without its LM head; `tok_emb`, `blocks`,
`norm`, `lm_head` are the decoder's, named as in `DecoderLM`.
"""

from __future__ import annotations

import torch

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.encoder import EncoderLM
from candorlm.model.layers import padding_mask
from candorlm.model.trunk import Trunk


class Seq2SeqLM(Trunk):
    def __init__(self, cfg: ModelConfig):
        shared_vocab = cfg.src_vocab_size == 0
        enc_cfg = cfg.model_copy(update={"n_layers": cfg.n_encoder_layers or cfg.n_layers,
                                         "vocab_size": cfg.src_vocab_size or cfg.vocab_size, "arch": "encoder"})
        encoder = EncoderLM(enc_cfg, lm_head=False)
        # The decoder: encoder, then tok_emb (the encoder's, with one vocabulary), blocks with
        # cross-attention, norm, lm_head, rope: see Trunk. Its hook points are hook_embed,
        # blocks.N.*, hook_norm, and the encoder's encoder.hook_embed, encoder.blocks.N.*, encoder.hook_norm.
        super().__init__(cfg, encoder=encoder, tok_emb=encoder.tok_emb if shared_vocab else None)
        self.shared_vocab = shared_vocab

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
        self.check_length(past + T, "target")
        position_ids = torch.arange(past, past + T, device=decoder_input_ids.device).expand(B, T)
        rope = self.rope(position_ids)
        # Causal self-attention: the whole prefix during training, or one new token that sees the cache.
        is_causal = past == 0 and T > 1
        if past and T > 1:
            raise ValueError("with a cache, feed the decoder one token at a time")
        memory_rope = self.rope.span(0, memory.shape[1]) if self.cfg.cross_attention_rope else None
        x = self.run_blocks(decoder_input_ids, rope, None, is_causal, cache,
                            memory=memory, memory_mask=padding_mask(memory_mask), memory_rope=memory_rope)
        return self.lm_head(x)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, vocab): the source input_ids (B, S) with its padding mask,
        and the target shifted right (starting with <|bos|>) as decoder_input_ids (B, T)."""
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask)
