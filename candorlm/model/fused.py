"""Fused projections: linear layers that read the same input, run as one matmul.

Llama's q/k/v projections read the same normed input. Run one by one, on a CPU each is a
small matmul with its own dispatch and, in the backward pass, an input gradient that must be
added to the others'; nanoGPT's block has one `c_attn` instead. (SwiGLU's gate and up also read
one input, but stay two matmuls: the halves of one fused output are strided views, and the
gated activation's elementwise passes over them cost more than the second matmul; layers.py.)

Here the weights stay separate parameters (`q_proj.weight`, `k_proj.weight`, `v_proj.weight`: the state
dict, checkpoints, HF export and import, sharded checkpoints and name-based hooks do not change)
and are fused at compute time:

- while gradients flow (training): `F.linear(x, torch.cat(weights))`; the cat's backward hands
  each weight its slice of the gradient, so the weights train exactly as separate layers;
- without gradients (generation, evaluation): the concatenated weight, already cast to
  autocast's dtype where autocast is on, is kept on the owning module and reused for as long as
  the very same weight tensors are unchanged (same objects, same version counters: an optimizer
  step, `load_state_dict` and any in-place write bump the version). A write through `.data`
  bypasses the version counter and is not seen: candorlm never writes weights that way. Nor
  does the fused AdamW kernel bump it: candorlm's optimizer does so after each step
  (training/optim.py); a model stepped by another loop's `AdamW(fused=True)` must drop
  `_fused_weights` from its modules before a no-gradient pass.

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


def fused_linear(x: torch.Tensor, owner: nn.Module, layers: tuple[nn.Linear, ...]) -> torch.Tensor:
    """x (..., C) through bias-free `layers` side by side: (..., sum of their out_features),
    the first layer's outputs first. `owner` keeps the concatenated weight between calls made
    without gradients (see the module's header)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.linear(x, torch.cat([layer.weight for layer in layers]))
    return F.linear(x, kept_weight(owner, layers, x.device.type))


def kept_weight(owner: nn.Module, layers: tuple[nn.Linear, ...], device_type: str) -> torch.Tensor:
    """The layers' weights concatenated (in autocast's dtype where it is on), kept on `owner` for as
    long as they are the same tensors at the same versions (see the module's header)."""
    weights = tuple(layer.weight for layer in layers)
    dtype = weights[0].dtype
    if weights[0].is_floating_point() and torch.amp.is_autocast_available(device_type) \
            and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)  # what autocast would cast it to at every call
    versions = tuple(w._version for w in weights)
    store = owner.__dict__.setdefault("_fused_weights", {})  # a plain attribute: not in the state dict
    key = tuple(id(layer) for layer in layers)  # the layers are the owner's: their ids stay theirs
    kept = store.get(key)
    # The entry holds the weight tensors themselves: while kept, no other tensor can take their
    # identity, so "the same objects at the same versions" means the same values.
    if kept is not None and kept[2] == dtype and kept[1] == versions and all(
            a is b for a, b in zip(kept[0], weights)):
        return kept[3]
    fused = torch.cat(weights).to(dtype)
    store[key] = (weights, versions, dtype, fused)
    return fused
