"""Task heads on top of a backbone's hidden states: a pooled sequence classifier.

    logits = W · dropout(pool(hidden_states)) + b        pool: mean over real tokens, or the last one

Mean pooling suits an encoder (every position has seen the whole text); the last real token
suits a decoder (under causal attention it is the only position that has seen everything),
as in GPT-1's fine-tuning. The backbone is any model with `hidden_states(input_ids, attention_mask)`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Pooling = Literal["mean", "last"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """(B, T, C) hidden states and the (B, T) mask of real, right-padded tokens -> (B, C)."""
    mask = attention_mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    last = attention_mask.long().sum(1).clamp(min=1) - 1  # index of each row's last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class SequenceClassifier(nn.Module):
    """A backbone (DecoderLM or EncoderLM) with a linear classification head on a pooled state."""

    def __init__(self, backbone: nn.Module, n_labels: int, pooling: Pooling, dropout: float = 0.1):
        super().__init__()
        if n_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {n_labels}")
        self.backbone, self.pooling = backbone, pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.cfg.d_model, n_labels)
        nn.init.normal_(self.head.weight, std=backbone.cfg.init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self):  # noqa: ANN201 - the backbone's ModelConfig
        return self.backbone.cfg

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Label logits (B, n_labels) for right-padded input_ids (B, T)."""
        # A decoder needs no mask with right padding: causal attention never looks ahead at the pads.
        mask = attention_mask if self.backbone.cfg.arch == "encoder" else None
        hidden = self.backbone.hidden_states(input_ids, mask)
        return self.head(self.dropout(pool(hidden, attention_mask, self.pooling)))
