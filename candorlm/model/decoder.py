"""DecoderLM: a GPT-style decoder-only transformer language model, in Llama's conventions.

Every way it departs from the textbook GPT (Vaswani et al. 2017; Radford et al. 2019):
- RMSNorm instead of LayerNorm, before each sub-layer (pre-norm), plus a final norm; computed in fp32;
- rotary position embeddings on queries and keys instead of learned absolute positions;
- SwiGLU feed-forward network (ReLU/GELU MLPs remain options via `mlp`);
- no bias in any linear layer; optional grouped-query attention (`n_kv_heads`);
- input and output embeddings tied by default; no dropout by default;
- attention by PyTorch's fused scaled_dot_product_attention: the textbook
  softmax(QK^T / sqrt(d_k)) V, with its attention weights, runs only while a hook is attached
  to `attn.hook_attn_scores` or `attn.hook_pattern` (model/layers.py, model/hooks.py);
- given targets, the loss comes from the final hidden states a chunk of tokens at a time,
  never holding every token's logits (model/loss.py);
- options from modded-nanoGPT, off by default and not exportable to Llama: value embeddings
  (model/value_embeds.py) and logit soft-capping (`logit_softcap`, model/loss.py);
- a preallocated KV cache for decoding (model/cache.py); left-padded batches set positions
  from the attention mask.
Each choice is Llama's (or PyTorch's), so `interop/hf.py` exports the model to
`transformers.LlamaForCausalLM` with the same logits (tests/test_hf_parity.py).
Initialisation is GPT-2's: Normal(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers).
"""

from __future__ import annotations

import torch

from candorlm.config import ModelConfig
from candorlm.model.cache import KVCache
from candorlm.model.loss import cap_logits, linear_cross_entropy, token_losses
from candorlm.model.trunk import Trunk


class DecoderLM(Trunk):
    def __init__(self, cfg: ModelConfig):
        # tok_emb, causal blocks (self-attention + MLP), norm, lm_head tied to tok_emb, rope: see Trunk
        super().__init__(cfg)

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
        cap = self.cfg.logit_softcap  # 0: off; else every path caps alike (model/loss.py)
        if targets is not None and reduction == "none":
            return token_losses(x, self.lm_head.weight, targets, softcap=cap)
        if targets is not None:
            return linear_cross_entropy(x, self.lm_head.weight, targets, softcap=cap)
        return cap_logits(self.lm_head(x), cap)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, d_model): what the LM head, or a task head, reads."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        self.check_length(past + T)
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + T]
        # Every row at the same positions (no padding): one rotation table shared by the batch.
        rope = self.rope(position_ids) if position_ids is not None else self.rope.span(past, T)
        mask, is_causal = self._attention_mask(attention_mask, B, T, past, input_ids.device)
        return self.run_blocks(input_ids, rope, mask, is_causal, cache)

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

