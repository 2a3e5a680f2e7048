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

from candorlm.config import ModelConfig
from candorlm.model.layers import padding_mask
from candorlm.model.trunk import Trunk


class EncoderLM(Trunk):
    def __init__(self, cfg: ModelConfig, lm_head: bool = True):
        # tok_emb, bidirectional blocks, norm, lm_head tied to tok_emb (the masked-LM head; an
        # encoder inside an encoder-decoder has no use for it), rope: see Trunk
        super().__init__(cfg, lm_head=lm_head)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, d_model) of input_ids (B, T).

        attention_mask (B, T): 1 for real tokens, 0 for padding; padding is never attended to.
        Pad on the right, so that real tokens keep positions 0..n-1.
        """
        B, T = input_ids.shape
        self.check_length(T)
        position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        mask = padding_mask(attention_mask)  # (B, 1, 1, T): every query sees every real key
        return self.run_blocks(input_ids, self.rope(position_ids), mask, is_causal=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-LM logits (B, T, vocab): at each position, the model's guess of the original token."""
        if self.lm_head is None:
            raise ValueError("this encoder was built without an LM head; use hidden_states")
        return self.lm_head(self.hidden_states(input_ids, attention_mask))
