"""Fused projections: linear layers that read the same input, run as one matmul.

Llama's q/k/v projections read the same normed input. Run one by one, on a CPU each is a
small matmul with its own dispatch and, in the backward pass, an input gradient that must be
added to the others'; nanoGPT's block has one `c_attn` instead. (SwiGLU's gate and up also read
one input, but stay two matmuls: the halves of one fused output are strided views, and the
gated activation's elementwise passes over them cost more than the second matmul; layers.py.)

Here the weights stay separate parameters (`q_proj.weight`, `k_proj.weight`, `v_proj.weight`: the state
dict, checkpoints, HF export and import, sharded checkpoints and name-based hooks do not change)
and are fused at compute time, `torch.cat(weights)`:

- while gradients flow (training): the cat's backward hands each weight its slice of the
  gradient, so the weights train exactly as separate layers;
- without gradients (generation, evaluation): the concatenated weight, already cast to
  autocast's dtype where autocast is on, is kept on the first layer and reused while the weights
  are unchanged: the same tensors, at the same versions and addresses, and a sample of their
  values (every 997th, flattened) equal to the one taken when it was made. The versions see
  in-place writes (an optimizer step, `load_state_dict`), the addresses `.data = ...`, and the
  sample the writes that leave both alone but change many values: the fused AdamW kernel stepped
  by a loop outside candorlm, a copy or in-place arithmetic through `.data` (an EMA), any run of
  997 values or more (a head). A write through `.data` of a few scattered values, or of one row
  or column, can escape it (a row or column of a d256 projection is sampled 1 time in 4).
  A generation checks at its first use (the prompt's pass) and keeps the weight in its KV cache
  (`KVCache.fused`) for its later tokens and model/decode.py's DecodeStep (which fuses gate/up
  the same way); a call without a cache checks at every call. Checking cost under 1% of a
  32-token generation at d256, where concatenating anew at each generation cost 4% (and keeping
  it unchecked, as before, read stale weights after such writes; bench/fused_keep.py).

Layers that someone watches run one by one, as modules: when any of them has a forward or
backward hook (Opacus registers them for DP-SGD's per-sample gradients, privacy/dp.py), or a
global module hook is registered, `watched` says so and the caller calls each layer itself.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

SAMPLE_STRIDE = 997  # every 997th value of the weights, flattened (prime: no row or column is always missed)


def watched(*layers: nn.Module) -> bool:
    """True when a module hook would see these layers run: they must then run as modules."""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in layers)


def fused_linear(x: torch.Tensor, layers: tuple[nn.Linear, ...], store: dict | None = None) -> torch.Tensor:
    """x (..., C) through bias-free `layers` side by side: (..., sum of their out_features),
    the first layer's outputs first. `store`: a generation's (a KV cache's `fused`), where the
    concatenated weight is kept for its later calls (see the module's header)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.linear(x, torch.cat([layer.weight for layer in layers]))
    return F.linear(x, kept_weight(store, layers, x.device.type))


class _Kept(NamedTuple):
    weights: tuple[torch.Tensor, ...]  # the tensors themselves: while kept, no other can take their identity
    versions: tuple[int, ...]
    addresses: tuple[int, ...]
    dtype: torch.dtype
    sample: torch.Tensor
    fused: torch.Tensor


def kept_weight(store: dict | None, layers: tuple[nn.Linear, ...], device_type: str) -> torch.Tensor:
    """The layers' weights concatenated (in autocast's dtype where it is on): the one kept on the
    first layer while the weights are unchanged, else made anew; `store` (a generation's) keeps it
    for the generation's later calls, checked against versions only (see the module's header)."""
    weights = tuple(layer.weight for layer in layers)
    dtype = weights[0].dtype
    if weights[0].is_floating_point() and torch.amp.is_autocast_available(device_type) \
            and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)  # what autocast would cast it to at every call
    versions = tuple(w._version for w in weights)
    key = tuple(id(layer) for layer in layers)  # the layers outlive the store: their ids stay theirs
    mine = store.get(key) if store is not None else None
    if mine is not None and mine.dtype == dtype and mine.versions == versions and _same(mine.weights, weights):
        return mine.fused  # within a generation
    kept = layers[0].__dict__.get("_fused_kept")  # a plain attribute: not in the state dict
    if kept is None or not _unchanged(kept, weights, versions, dtype):
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, wherever it is made: a compiled
            fused = torch.cat(weights).to(dtype)  # step given an inference tensor instead compiles again
        kept = _Kept(weights, versions, tuple(w.data_ptr() for w in weights), dtype, _sample(weights), fused)
        layers[0].__dict__["_fused_kept"] = kept
    if store is not None:
        store[key] = kept
    return kept.fused


def _unchanged(kept: _Kept, weights: tuple[torch.Tensor, ...], versions: tuple[int, ...], dtype: torch.dtype) -> bool:
    """The full check of the module's header: tensors, versions, dtype, addresses, then the sample."""
    return (kept.dtype == dtype and kept.versions == versions and _same(kept.weights, weights)
            and kept.addresses == tuple(w.data_ptr() for w in weights) and torch.equal(kept.sample, _sample(weights)))


def _same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(x is y for x, y in zip(a, b))


def _sample(weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([w.detach().reshape(-1)[::SAMPLE_STRIDE] for w in weights])
