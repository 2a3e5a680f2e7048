"""Task heads on top of a backbone's hidden states: a pooled sequence classifier, a per-token
tagger (TokenTagger), and an extractive span reader (SpanReader, best_spans).

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


class _LabelHead(nn.Module):
    """A backbone with dropout and a linear layer from its width to `n_labels` (what the classifier
    and the tagger share; they differ in which hidden states reach the head)."""

    def __init__(self, backbone: nn.Module, n_labels: int, dropout: float, kind: str):
        super().__init__()
        if n_labels < 2:
            raise ValueError(f"a {kind} needs at least 2 labels, got {n_labels}")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.cfg.d_model, n_labels)
        nn.init.normal_(self.head.weight, std=backbone.cfg.init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self):  # noqa: ANN201 - the backbone's ModelConfig
        return self.backbone.cfg


class SequenceClassifier(_LabelHead):
    """A backbone (DecoderLM or EncoderLM) with a linear classification head on a pooled state."""

    def __init__(self, backbone: nn.Module, n_labels: int, pooling: Pooling, dropout: float = 0.1):
        super().__init__(backbone, n_labels, dropout, "classifier")
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Label logits (B, n_labels) for right-padded input_ids (B, T)."""
        # A decoder needs no mask with right padding: causal attention never looks ahead at the pads.
        mask = attention_mask if self.backbone.cfg.arch == "encoder" else None
        hidden = self.backbone.hidden_states(input_ids, mask)
        return self.head(self.dropout(pool(hidden, attention_mask, self.pooling)))


class TokenTagger(_LabelHead):
    """A backbone with a linear head on every position's hidden state: one label per input token
    (BERT's token classification). On an encoder each position has seen the whole input, which is
    what settles a homophone in the pinyin tagger (candorlm.tasks.translate_tag).

        logits[b, t] = W · dropout(hidden_states(ids)[b, t]) + b
    """

    def __init__(self, backbone: nn.Module, n_labels: int, dropout: float = 0.1):
        super().__init__(backbone, n_labels, dropout, "tagger")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Label logits (B, T, n_labels), float32, for right-padded input_ids (B, T)."""
        mask = attention_mask if self.backbone.cfg.arch == "encoder" else None  # causal: pads come last anyway
        return self.head(self.dropout(self.backbone.hidden_states(input_ids, mask))).float()


class SpanReader(nn.Module):
    """An extractive reader: start and end logits over the tokens of a backbone's input (BERT's
    SQuAD head), with one cheap input feature per token added to the token embeddings.

        start, end = split(W · dropout(hidden_states(ids + feature_emb(features))))

    features (B, T) in {0, 1} (the task says what they mean; candorlm's QA: "this context token
    also occurs in the question", as DrQA's exact-match feature). The embedding is added at the
    backbone's `hook_embed` point, the documented place to change the token embeddings, so any
    Trunk takes it unchanged. Under causal attention (a decoder) a position has not yet seen the
    token after it, which is what tells where a span ends; there the end logit of position t is
    read from the state at t + 1 (the span ends before the next token).
    """

    def __init__(self, backbone: nn.Module, dropout: float = 0.1, n_features: int = 2):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.feature = nn.Embedding(n_features, backbone.cfg.d_model)
        self.head = nn.Linear(backbone.cfg.d_model, 2)
        nn.init.normal_(self.feature.weight, std=backbone.cfg.init_std)
        nn.init.normal_(self.head.weight, std=backbone.cfg.init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self):  # noqa: ANN201 - the backbone's ModelConfig
        return self.backbone.cfg

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits (B, T), float32, for right-padded input_ids (B, T)."""
        causal = self.backbone.cfg.arch != "encoder"
        added = self.feature(features)
        point = self.backbone.hook_embed

        def add_feature(x: torch.Tensor, hook: nn.Module) -> torch.Tensor:
            return x + added.to(x.dtype)

        point.fns.insert(0, add_feature)  # first, so that a user's hook on hook_embed sees the sum
        try:
            hidden = self.backbone.hidden_states(input_ids, None if causal else attention_mask)
        finally:
            point.fns.remove(add_feature)
        logits = self.head(self.dropout(hidden)).float()
        start, end = logits[..., 0], logits[..., 1]
        if causal:  # end at t from the state at t + 1; the last position has no successor
            end = torch.cat([end[:, 1:], torch.full_like(end[:, :1], -1e4)], dim=1)
        return start, end


def best_spans(start: torch.Tensor, end: torch.Tensor, allowed: torch.Tensor, max_len: int) -> list[tuple[int, int]]:
    """The highest-scoring legal span (i, j) of each row: allowed[i] and allowed[j], i <= j < i + max_len,
    score start[i] + end[j]. start, end, allowed: (B, T). A row with nothing allowed gets (0, -1)."""
    T = start.shape[-1]
    idx = torch.arange(T, device=start.device)
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_len)  # (T, T): j in [i, i + max_len)
    ok = band[None] & allowed[:, :, None] & allowed[:, None, :]
    scores = (start.float()[:, :, None] + end.float()[:, None, :]).masked_fill(~ok, -torch.inf)
    flat = scores.flatten(1).argmax(-1)
    out = []
    for row, k in enumerate(flat.tolist()):
        i, j = divmod(k, T)
        out.append((i, j) if bool(ok[row, i, j]) else (0, -1))
    return out
