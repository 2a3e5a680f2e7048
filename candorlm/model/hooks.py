"""Named activation points: read or overwrite any intermediate tensor during a forward pass.

Attention, note first: the model computes attention with PyTorch's fused
scaled_dot_product_attention, which never holds the attention weights. While a hook is attached
to an attention module's `hook_attn_scores` or `hook_pattern`, that module computes the textbook
softmax(Q K^T / sqrt(d_k)) V explicitly instead (the same numbers to float rounding), so that the
scores and weights exist to be read or replaced. Every other point leaves the computation as it is.

Every block carries `HookPoint`s, named by their place in the module tree with TransformerLens's
names, so `model.named_modules()` finds them and new modules (an encoder, cross-attention) get
theirs the same way:

    hook_embed                        token embeddings                      (B, T, C)
    blocks.{i}.hook_resid_pre         residual stream entering block i      (B, T, C)
    blocks.{i}.attn.hook_q            queries, before rotary positions      (B, T, H, D)
    blocks.{i}.attn.hook_k            keys of the new positions, before rotary positions (B, T, Hkv, D)
    blocks.{i}.attn.hook_v            values of the new positions           (B, T, Hkv, D)
    blocks.{i}.attn.hook_attn_scores  Q K^T / sqrt(D), -inf where masked    (B, H, T, S)   [explicit attention]
    blocks.{i}.attn.hook_pattern      attention weights per head            (B, H, T, S)   [explicit attention]
    blocks.{i}.attn.hook_z            attention output per head, before o_proj  (B, T, H, D)
    blocks.{i}.hook_attn_out          attention output added to the stream  (B, T, C)
    blocks.{i}.hook_resid_mid         residual stream between attention and MLP (B, T, C)
    blocks.{i}.hook_mlp_out           feed-forward output added to the stream (B, T, C)
    blocks.{i}.hook_resid_post        residual stream leaving block i       (B, T, C)
    hook_norm                         the final norm's output, before the unembedding (B, T, C)

B batch, T query positions, S key positions (with a KV cache: the cached ones too), H query
heads, Hkv key/value heads (fewer under grouped-query attention), D head dim, C model width.
With a KV cache, hook_k and hook_v see only the positions computed in this call, not those read
back from the cache (as in TransformerLens).

The encoder (EncoderLM) has the same points, its attention bidirectional. The encoder-decoder
(Seq2SeqLM) names its encoder's points `encoder.hook_embed`, `encoder.blocks.{i}.*`,
`encoder.hook_norm` (S source positions), and its decoder's as above, plus cross-attention:

    blocks.{i}.cross_attn.hook_q            target queries                  (B, T, H, D)
    blocks.{i}.cross_attn.hook_k, hook_v    source keys and values, computed once per sequence (B, S, Hkv, D)
    blocks.{i}.cross_attn.hook_attn_scores  scores from target queries to source keys (B, H, T, S) [explicit]
    blocks.{i}.cross_attn.hook_pattern      weights from target queries to source keys (B, H, T, S) [explicit]
    blocks.{i}.cross_attn.hook_z            cross-attention output per head        (B, T, H, D)
    blocks.{i}.hook_cross_out               cross-attention output added to the stream (B, T, C)
    blocks.{i}.hook_resid_cross             residual stream after cross-attention  (B, T, C)

A hook is `fn(tensor, hook) -> tensor | None`: returning a tensor replaces the activation.
Unused, a point costs one Python call and a list check (no tensor work, nothing recorded), so
training is unchanged (tests/test_hooks.py checks the training step is bitwise identical).

    logits, cache = run_with_cache(model, ids)
    cache["blocks.0.attn.hook_pattern"]          # (B, H, T, T)
    with hooks(model, {"blocks.1.hook_resid_pre": lambda x, hook: x * 0}):
        ablated = model(ids)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """An identity on the forward pass that runs the hooks attached to it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.fns: list[HookFn] = []
        self.name = ""  # set by hook_points() from the module tree

    @property
    def active(self) -> bool:
        return bool(self.fns)

    # Overriding __call__ (not forward) skips nn.Module's hook machinery: unhooked, a point is
    # one attribute check, so the training step does the same tensor work as without points.
    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.fns:
            return x
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def extra_repr(self) -> str:
        return self.name


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of `model`, by name (module order: not necessarily the order of computation)."""
    points = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def select(model: nn.Module, names: str | list[str] | Callable[[str], bool] | None) -> list[str]:
    """Hook point names matching `names`: None (all), a glob ('blocks.*.hook_resid_post'),
    a list of names or globs, or a predicate. Unknown names are an error that lists valid ones."""
    points = list(hook_points(model))
    if names is None:
        return points
    if callable(names):
        return [n for n in points if names(n)]
    patterns = [names] if isinstance(names, str) else list(names)
    chosen = []
    for pattern in patterns:
        found = [n for n in points if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise KeyError(f"no hook point matches '{pattern}'. Hook points: {', '.join(points)}")
        chosen.extend(n for n in found if n not in chosen)
    return chosen


@contextmanager
def hooks(model: nn.Module, fns: Mapping[str, HookFn | list[HookFn]]) -> Iterator[nn.Module]:
    """Attach hooks (name or glob -> fn) for the duration of a `with` block; always detached after."""
    points = hook_points(model)
    attached: list[tuple[HookPoint, HookFn]] = []
    try:
        for pattern, fn_or_list in fns.items():
            for name in select(model, pattern):
                for fn in fn_or_list if isinstance(fn_or_list, list) else [fn_or_list]:
                    points[name].fns.append(fn)
                    attached.append((points[name], fn))
        yield model
    finally:
        for point, fn in reversed(attached):
            point.fns.remove(fn)


class _Identity:
    """What a hook point becomes when compiled out: a plain callable, not a module, never active."""

    active = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


def compile_out_hook_points(model: nn.Module) -> nn.Module:
    """Replace every hook point of `model` by a bare identity, in place: the reference against
    which the cost of unused hook points is measured (tests, bench/hooks_overhead.py)."""
    for name in list(hook_points(model)):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        delattr(parent, attr)
        object.__setattr__(parent, attr, _Identity())
    return model


def reset_hooks(model: nn.Module) -> None:
    """Detach every hook (after an interrupted session that attached them by hand)."""
    for point in hook_points(model).values():
        point.fns.clear()


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations recorded by run_with_cache, by hook point name."""

    def __init__(self, store: dict[str, torch.Tensor]):
        self._store = store

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._store[name]
        except KeyError:
            raise KeyError(f"'{name}' was not cached. Cached: {', '.join(self._store)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def stack(self, suffix: str, prefix: str = "") -> torch.Tensor:
        """`{prefix}blocks.{i}.<suffix>` for every layer i, stacked on a new first dimension (layer);
        prefix "encoder." reads an encoder-decoder's encoder."""
        head = prefix + "blocks."
        names = [n for n in self._store if n.startswith(head) and n[len(head):].split(".", 1)[1] == suffix]
        if not names:
            raise KeyError(f"no cached '{head}*.{suffix}'. Cached: {', '.join(self._store)}")
        names.sort(key=lambda n: int(n[len(head):].split(".")[0]))
        return torch.stack([self._store[n] for n in names])


def run_with_cache(model: nn.Module, *args: Any, names: str | list[str] | Callable[[str], bool] | None = None,
                   detach: bool = True, **kwargs: Any) -> tuple[Any, ActivationCache]:
    """Run `model(*args, **kwargs)` and record the activations at `names` (default: all points).

    With detach=False the cached tensors stay in the autograd graph (for gradients with
    respect to activations). Caching `attn.hook_pattern` or `attn.hook_attn_scores` switches
    that attention module to the explicit computation for this call only.
    """
    store: dict[str, torch.Tensor] = {}

    def record(x: torch.Tensor, hook: HookPoint) -> None:
        store[hook.name] = x.detach() if detach else x

    with hooks(model, {name: record for name in select(model, names)}):
        out = model(*args, **kwargs)
    return out, ActivationCache(store)
