"""EncoderLM: a BERT-style encoder, built from the decoder's blocks with bidirectional attention.

Departures from BERT (Devlin et al. 2019), each to share the decoder's parts:
- pre-norm RMSNorm, rotary positions, SwiGLU, no biases (BERT: post-norm LayerNorm, learned
  absolute positions, GELU, biases); no token-type embeddings and no next-sentence objective;
- the masked-LM head is the final norm and the (tied) output embedding, with no extra
  dense+GELU transform in between.

Every position attends to every real (non-padding) position. Pretraining predicts masked
tokens (`candorlm.training.objectives.mask_tokens`: 15% of tokens, 80/10/10); tasks read
`hidden_states` through a pooled classification head (`candorlm.model.heads`).
"""

from __future__ import annotations

import torch
from torch import nn

from candorlm.config import ModelConfig
from candorlm.model.layers import build_trunk, init_weights, padding_mask


class EncoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig, lm_head: bool = True):
        super().__init__()
        # An encoder inside an encoder-decoder has no use for the masked-LM head.
        build_trunk(self, cfg, lm_head=lm_head)
        init_weights(self, cfg.init_std, cfg.n_layers)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, d_model) of input_ids (B, T).

        attention_mask (B, T): 1 for real tokens, 0 for padding; padding is never attended to.
        Pad on the right, so that real tokens keep positions 0..n-1.
        """
        B, T = input_ids.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the model's maximum of {self.cfg.max_seq_len}")
        position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        rope = self.rope(position_ids)
        mask = padding_mask(attention_mask)  # (B, 1, 1, T): every query sees every real key
        x = self.hook_embed(self.tok_emb(input_ids))
        for block in self.blocks:
            x = block(x, rope, mask, is_causal=False)
        return self.hook_norm(self.norm(x))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-LM logits (B, T, vocab): at each position, the model's guess of the original token."""
        if self.lm_head is None:
            raise ValueError("this encoder was built without an LM head; use hidden_states")
        return self.lm_head(self.hidden_states(input_ids, attention_mask))
