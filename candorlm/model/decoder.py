"""DecoderLM: a GPT-style decoder-only transformer language model, in Llama's conventions.

Departures from the textbook GPT (Vaswani et al. 2017; Radford et al. 2019), each a Llama choice:
- RMSNorm instead of LayerNorm, applied before each sub-layer (pre-norm), plus a final norm;
- rotary position embeddings on queries and keys instead of learned absolute positions;
- SwiGLU feed-forward network (ReLU/GELU MLPs remain options via `mlp`);
- no bias in any linear layer; optional grouped-query attention (`n_kv_heads`);
- input and output embeddings tied by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.layers import build_trunk, init_weights
from candorlm.model.loss import linear_cross_entropy, token_losses


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        build_trunk(self, cfg)
        init_weights(self, cfg.init_std, cfg.n_layers)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        cfg = self.cfg
        return KVCache(cfg.n_layers, batch_size, cfg.kv_heads, max_len or cfg.max_seq_len, cfg.head_dim,
                       self.tok_emb.weight.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, vocab) for input_ids (B, T); or, given targets (B, T), the mean
        next-token cross-entropy (reduction="none": each token's, (B, T), without gradient),
        computed without holding the logits (see model/loss.py).

        attention_mask (B, S), 1 for real tokens and 0 for padding, covers the cached positions
        too (S = cached + T); with left-padded prompts it also sets the positions.
        """
        x = self.hidden_states(input_ids, attention_mask, position_ids, cache)
        if targets is not None and reduction == "none":
            return token_losses(x, self.lm_head.weight, targets)
        if targets is not None:
            return linear_cross_entropy(x, self.lm_head.weight, targets)
        return self.lm_head(x)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, d_model): what the LM head, or a task head, reads."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds the model's maximum of {self.cfg.max_seq_len}")
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + T]
        # Every row at the same positions (no padding): one rotation table shared by the batch.
        rope = self.rope(position_ids) if position_ids is not None else self.rope.span(past, T)
        mask, is_causal = self._attention_mask(attention_mask, B, T, past, input_ids.device)
        x = self.hook_embed(self.tok_emb(input_ids))
        for block in self.blocks:
            x = block(x, rope, mask, is_causal, cache)
        if cache is not None:
            cache.advance(T)
        return self.hook_norm(self.norm(x))

    @staticmethod
    def _attention_mask(attention_mask: torch.Tensor | None, B: int, T: int, past: int,
                        device: torch.device) -> tuple[torch.Tensor | None, bool]:
        if attention_mask is None:
            if past == 0:
                return None, True  # plain causal attention: SDPA's fast path
            if T == 1:
                return None, False  # one new token sees the whole cache
        S = past + T
        q_pos = torch.arange(past, S, device=device)
        allowed = torch.arange(S, device=device)[None, :] <= q_pos[:, None]  # (T, S) causal
        allowed = allowed.expand(B, 1, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :S].bool()
        # A padding query would see nothing and give NaNs: let such rows see everything instead.
        return allowed | ~allowed.any(-1, keepdim=True), False


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
            reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in fp32 (logits may be bf16 under autocast)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)
