"""Value embeddings (modded-nanoGPT): extra token-embedding tables mixed into attention values.

A small model spends much of its first layers recovering which token sits where; a value
embedding hands that straight to attention: layer i adds a learned, gated row of a table, looked
up by the token at each position, to the values it attends over,

    v_i = W_v x_i + g_i * E_j[token]

With `model.value_embeds = n`, table j (0 <= j < n) feeds layer j and layer n_layers-1-j (the
U-shaped sharing of modded-nanoGPT); layers in the middle get none. The tables cost a lookup
each, no matmul. LlamaForCausalLM has no such path, so `candorlm export` refuses these models.
"""

from __future__ import annotations

import torch
from torch import nn

from candorlm.config import ModelConfig


def table_for(layer: int, n_layers: int, n_tables: int) -> int | None:
    """Which table layer `layer` adds to its values: j for the first and the last n_tables layers."""
    if layer < n_tables:
        return layer
    if n_layers - 1 - layer < n_tables:
        return n_layers - 1 - layer
    return None


class ValueEmbeds(nn.Module):
    """`cfg.value_embeds` tables of width n_kv_heads * head_dim, and one gate per layer (init 1)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = cfg.kv_heads * cfg.head_dim
        self.tables = nn.ModuleList(nn.Embedding(cfg.vocab_size, width) for _ in range(cfg.value_embeds))
        self.layer_table = [table_for(i, cfg.n_layers, cfg.value_embeds) for i in range(cfg.n_layers)]
        self.gates = nn.Parameter(torch.ones(cfg.n_layers))

    def forward(self, input_ids: torch.Tensor) -> list[torch.Tensor | None]:
        """One (B, T, n_kv_heads * head_dim) addition to the values per layer, or None."""
        rows = [table(input_ids) for table in self.tables]
        return [None if j is None else rows[j] * self.gates[i].to(rows[j].dtype)
                for i, j in enumerate(self.layer_table)]
