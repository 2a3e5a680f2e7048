"""A preallocated key/value cache: decoding appends one position per step, no reallocation."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for positions 0..length-1 of a batch of sequences.

    `update` writes a layer's new keys/values after the cached ones and returns all of them;
    `advance` moves `length` on once every layer has written (the model calls it).
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu"):
        self.n_layers, self.batch_size, self.max_len = n_layers, batch_size, max_len
        self.shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.device = torch.device(device)
        self.k: torch.Tensor | None = None  # allocated at the first write, in the keys' dtype
        self.v: torch.Tensor | None = None
        self.length = 0
        # Cross-attention keys/values of an encoder's output, per decoder layer: computed at the
        # first decoding step and reused by every later one (an encoder-decoder's cache).
        self.memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Concatenated q/k/v (and the decode step's gate/up) weights, checked against the weights at
        # this generation's first use and kept for the rest of it (model/fused.py).
        self.fused: dict = {}

    def reset(self) -> None:
        self.length = 0
        self.memory = {}
        self.fused = {}

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch, in that order (beam search picks which beams go on)."""
        if self.k is not None:
            self.k = self.k.index_select(1, index)
            self.v = self.v.index_select(1, index)
        self.memory = {layer: (k.index_select(0, index), v.index_select(0, index))
                       for layer, (k, v) in self.memory.items()}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.k.dtype != k.dtype:
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=self.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=self.device)
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} positions needed, {self.max_len} allocated")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
