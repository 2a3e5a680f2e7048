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
- in a generation (no gradients, a KV cache): the concatenated weight, already cast to
  autocast's dtype where autocast is on, is made once and kept in the cache (`KVCache.fused`)
  for the rest of that generation: the prompt's pass, every later token's, and model/decode.py's
  DecodeStep, which fuses gate/up the same way. The next generation has a new cache and
  concatenates anew, so it reads whatever was written to the weights in between, however it was
  written: an optimizer step (the fused AdamW kernel leaves the version counters alone), a copy
  through `.data`, `load_state_dict` (in place or `assign=True`). Within a generation an entry is
  also dropped if the weights are other tensors or their versions moved. Concatenating once per
  generation costs ~1.5 ms of CPU at d256 (bench/fused_keep.py, under load: 1-2% of a 256-token
  greedy generation, 3-4% of a 32-token one); keeping it across generations, as before, was
  cheaper but read stale weights after any write that leaves the version counters alone;
- otherwise (evaluation batches without a cache): concatenated at every call, as in training.

Layers that someone watches run one by one, as modules: when any of them has a forward or
backward hook (Opacus registers them for DP-SGD's per-sample gradients, privacy/dp.py), or a
global module hook is registered, `watched` says so and the caller calls each layer itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module


def watched(*layers: nn.Module) -> bool:
    """True when a module hook would see these layers run: they must then run as modules."""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in layers)


def fused_linear(x: torch.Tensor, layers: tuple[nn.Linear, ...], store: dict | None = None) -> torch.Tensor:
    """x (..., C) through bias-free `layers` side by side: (..., sum of their out_features),
    the first layer's outputs first. `store`: where a call without gradients keeps the
    concatenated weight for the next ones (a KV cache's `fused`: one generation); None: made anew."""
    if store is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.linear(x, torch.cat([layer.weight for layer in layers]))
    return F.linear(x, kept_weight(store, layers, x.device.type))


def kept_weight(store: dict, layers: tuple[nn.Linear, ...], device_type: str) -> torch.Tensor:
    """The layers' weights concatenated (in autocast's dtype where it is on), kept in `store` (one
    generation's; see the module's header) for as long as they are the same tensors at the same versions."""
    weights = tuple(layer.weight for layer in layers)
    dtype = weights[0].dtype
    if weights[0].is_floating_point() and torch.amp.is_autocast_available(device_type) \
            and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)  # what autocast would cast it to at every call
    versions = tuple(w._version for w in weights)
    key = tuple(id(layer) for layer in layers)  # the layers outlive the store: their ids stay theirs
    kept = store.get(key)
    if kept is not None and kept[2] == dtype and kept[1] == versions and all(
            a is b for a, b in zip(kept[0], weights)):
        return kept[3]
    fused = torch.cat(weights).to(dtype)
    store[key] = (weights, versions, dtype, fused)
    return fused
