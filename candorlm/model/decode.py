"""A decoder's single-token step for generation, written once for static shapes.

Generating from a small model is bound by operator dispatch, not arithmetic: at d_model 256 the
general forward pass (nn.Modules, hook points, a rotary lookup and a mask per layer, a cache slice
per layer) makes about 1,000 aten calls per new token for about 5 MFLOP of work. `DecodeStep` is
the same computation for one new token per row, shaped so that nothing changes from one token to
the next:

- the KV cache is preallocated (`StaticKVCache`: one tensor per layer, so that a compiled step
  writes into it in place) and written at a slot given as a tensor (`index_copy_`);
- attention reads the cache's filled columns, a length that is the step's one dynamic size
  (so one compiled graph serves every length), and masks a left-padded prompt's padding;
- the rotary rows are looked up once per step for every layer; queries and keys rotate together;
- q/k/v and gate/up are one matmul each, on concatenated weights kept as model/fused.py keeps
  them (checked at the generation's start; q/k/v: the very tensor the prompt's forward pass used);
  the state dict keeps q_proj/k_proj/v_proj, gate_proj/up_proj;
- the step sees tensors only, not the model (a compiled step's per-call checks stay cheap);
- no hook points: the step is only used while no hook is attached (`supports`).

Eager, this is ~5x fewer operators than the general pass. Because every shape is fixed by (batch,
cache length, dtype), the same function also compiles with `torch.compile` into one graph per
shape: `DecodeStep.compiled` does so on first use and keeps it for the process (inductor also
keeps its kernels on disk, so a later process compiles faster). Compiling costs seconds to
minutes, so generate.py only asks for it where it pays.

The prompt itself (prefill) still runs through the general forward pass, writing the same cache.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.compiler import is_compiling

from candorlm.model.cache import KVCache
from candorlm.model.decoder import DecoderLM
from candorlm.model.hooks import HookPoint
from candorlm.model.fused import kept_weight
from candorlm.model.layers import apply_rope
from candorlm.model.ops import rms_norm, swiglu


# Inductor options for the compiled step. cpp_wrapper: the graph's calls (a dozen kernels and
# matmuls per layer) made from generated C++, not Python: at batch 1 about 10% of a step.
COMPILE_OPTIONS: dict[str, object] = {"cpp_wrapper": True}

# Greedy tokens per compiled call (`DecodeStep.greedy`). A call's fixed costs (guards on some
# 40 tensors, the caller's loop and argmax) are ~20% of a batch-1 step; 8 tokens a call leave
# 1/8 of that. The graph, and so compiling it, grows with it: 8 compiled in ~4x one step's time.
CHUNK = 8

# Graphs the step, and the greedy chunk, may each compile in a process. torch keeps at most
# torch._dynamo.config.recompile_limit (8) per function, shared by every model: the shapes are
# bucketed (a cache length is a power of two), but batch sizes, padding, dtypes and models
# multiply, and a server meets more than 8. Where torch.compile takes a limit of its own (2.13
# does), the step's is this, or the global one where that is higher; past it, a new shape
# decodes eagerly (generate.py says so once).
RECOMPILE_LIMIT = 64


class StaticKVCache(KVCache):
    """A KVCache that keeps each layer's keys and values in a tensor of its own, (B, Hkv, max_len, D).

    Separate tensors (not views of one) are what a compiled step can update in place: a mutated
    view of a shared base would be copied whole at every step.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu"):
        super().__init__(n_layers, batch_size, n_kv_heads, max_len, head_dim, device)
        self.ks: list[torch.Tensor] = []
        self.vs: list[torch.Tensor] = []
        self.span: torch.Tensor | None = None  # see DecodeStep._span

    def allocate(self, dtype: torch.dtype) -> None:
        # One column more than a generation fills: attention's slices (`[:, :, :n + j]`) then end
        # before the tensor does even in a greedy chunk that reaches the last column. A slice that
        # ends where the tensor ends is another case to dynamo: at the cache's end a compiled chunk
        # compiled again and fixed its dynamic size there, which failed (ConstraintViolationError).
        B, H, L, D = self.shape[1:]
        shape = (B, H, L + 1, D)
        self.ks = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(self.n_layers)]
        self.vs = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(self.n_layers)]

    def reorder(self, index: torch.Tensor) -> None:
        self.ks = [k.index_select(0, index) for k in self.ks]
        self.vs = [v.index_select(0, index) for v in self.vs]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.ks or self.ks[0].dtype != k.dtype:
            self.allocate(k.dtype)
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} positions needed, {self.max_len} allocated")
        self.ks[layer][:, :, start:end] = k
        self.vs[layer][:, :, start:end] = v
        return self.ks[layer][:, :, :end], self.vs[layer][:, :, :end]


# The model settings DecodeStep implements. A setting added later (a new lever) keeps generation
# on the forward pass whenever it is not at its default, until the step learns it.
KNOWN_SETTINGS = {"arch", "vocab_size", "n_encoder_layers", "src_vocab_size", "cross_attention_rope", "d_model",
                  "n_layers", "n_heads", "n_kv_heads", "d_ff", "mlp", "qk_norm", "zero_init_out", "max_seq_len",
                  "rope_theta", "norm_eps", "tie_embeddings", "dropout", "init_std"}


def supports(model: nn.Module) -> bool:
    """Whether `DecodeStep` computes what `model`'s forward pass would: a DecoderLM whose settings
    it knows, with no hook attached, neither a HookPoint's nor nn.Module's own."""
    if type(model) is not DecoderLM or model.cfg.arch != "decoder":
        return False
    cfg, defaults = model.cfg, type(model.cfg)()
    if any(getattr(cfg, key) != getattr(defaults, key) for key in type(cfg).model_fields if key not in KNOWN_SETTINGS):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return False
        if isinstance(module, HookPoint) and module.active:
            return False
    return True


class DecodeStep:
    """One new token per row, (B,) ids -> (B, vocab) logits, over a `StaticKVCache`.

    `step(token, slot, positions, key_ok, cache)`: token (B,) the newest ids; slot (1,) the
    cache column they take (every row the same: prompts are left-padded); positions (B,) their
    rotary positions (each row's count of real tokens before them); key_ok (B, max_len) bool,
    False at padding columns, None without padding. Attention reads columns 0..slot only. The
    caller advances slot, positions and `cache.length` after. `prepare(model, cache)` first, once
    per generation.

    The step itself (`_forward`) sees tensors only, never the model: a compiled step then checks
    a few dozen tensors' shapes per call, not the module tree's attributes (which cost more than
    the step's own pointwise work).
    """

    def __init__(self, model: nn.Module) -> None:
        cfg = model.cfg
        self.spec = (cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.norm_eps, cfg.mlp)
        self.weights: tuple = ()
        self._compiled: Callable | None = None
        self._greedy: Callable | None = None
        self.compile_error: str | None = None  # why compiling failed, once it has
        self.compiled_shapes: set[tuple] = set()  # shape_key()s compiled so far
        self.greedy_shapes: set[tuple] = set()  # greedy_key()s compiled so far
        self.over_limit: set[tuple] = set()  # shape_key()s and greedy_key()s past the recompile limit
        self.limit_said = False  # the warning that the limit is reached, given once
        self.steps = 0  # decode steps run for this model in this process

    def prepare(self, model: nn.Module, cache: StaticKVCache) -> None:
        """Collect the model's weights for this generation (not per token).

        q/k/v and gate/up come concatenated, as model/fused.py keeps them: checked against the
        weights at the generation's first use, then kept in its `cache` (q/k/v's is the one the
        prompt's forward pass used)."""
        device = model.tok_emb.weight.device.type
        layers = []
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
            qk_norm = (attn.q_norm.weight, attn.k_norm.weight) if hasattr(attn, "q_norm") else None
            if hasattr(mlp, "gate_proj"):
                up = kept_weight(cache.fused, (mlp.gate_proj, mlp.up_proj), device)
            else:
                up = mlp.up_proj.weight
            layers.append((block.attn_norm.weight, kept_weight(cache.fused, qkv, device),
                           qk_norm, attn.o_proj.weight, block.mlp_norm.weight, up, mlp.down_proj.weight))
        self.weights = (model.tok_emb.weight, model.rope.cos, model.rope.sin, tuple(layers), model.norm.weight,
                        model.lm_head.weight)

    def make_cache(self, model: nn.Module, batch_size: int, max_len: int) -> StaticKVCache:
        cfg = model.cfg
        return StaticKVCache(cfg.n_layers, batch_size, cfg.kv_heads, max_len, cfg.head_dim,
                             model.tok_emb.weight.device)

    def __call__(self, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
                 key_ok: torch.Tensor | None, cache: StaticKVCache, compiled: bool = False) -> torch.Tensor:
        fn = self._compiled if compiled and self._compiled is not None else _forward
        self.steps += 1
        return fn(self.spec, self.weights, token, slot, positions, key_ok, self._span(cache), cache.ks, cache.vs)

    def compile(self, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
                key_ok: torch.Tensor | None, cache: StaticKVCache) -> torch.Tensor:
        """Compile the step for this shape (once) and run it; raises whatever compiling raises.

        The compiled step writes the cache as the eager one does, so this call is the step itself."""
        if self._compiled is None:
            self._compiled = _compile(_forward)
        out = self._compiled(self.spec, self.weights, token, slot, positions, key_ok, self._span(cache),
                             cache.ks, cache.vs)
        self.compiled_shapes.add(shape_key(cache, key_ok))
        self.steps += 1
        return out

    def greedy(self, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor, key_ok: torch.Tensor | None,
               cache: StaticKVCache, banned: torch.Tensor | None) -> torch.Tensor:
        """CHUNK greedy tokens per row, (CHUNK, B), from one compiled call (compiled on the first
        call for its shape; raises whatever compiling raises). Writes CHUNK cache columns from
        `slot` on: the caller makes sure they exist, then advances by CHUNK. `banned`: (vocab,)
        0, or -inf for a token never to be chosen; None for none."""
        if self._greedy is None:
            self._greedy = _compile(_greedy)
        out = self._greedy(self.spec, self.weights, token, slot, positions, key_ok, self._span(cache),
                           cache.ks, cache.vs, banned, CHUNK)
        self.greedy_shapes.add(greedy_key(cache, key_ok, banned))
        self.steps += CHUNK
        return out

    @staticmethod
    def _span(cache: StaticKVCache) -> torch.Tensor:
        """A (n,) tensor whose length is the number of cache columns this step attends to (those
        written, and the new one): its one dynamic size, so that one compiled graph serves every
        length and attention reads only what is filled (a whole 512-column cache would cost batch
        8 three times the attention of the positions actually there)."""
        if cache.span is None:
            cache.span = torch.empty(cache.max_len, dtype=torch.uint8, device=cache.device)
        span = cache.span[:cache.length + 1]
        torch._dynamo.mark_dynamic(span, 0)  # (the prompt has a token: n >= 2, never specialised)
        return span


def recompile_limit() -> int:
    """The graphs each compiled decode function may hold (see RECOMPILE_LIMIT)."""
    config = torch._dynamo.config
    limit = getattr(config, "recompile_limit", None) or config.cache_size_limit  # (its name before torch 2.6)
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return max(RECOMPILE_LIMIT, limit)
    return limit


def _compile(fn: Callable) -> Callable:
    # dynamic=False: every size static (the head counts in `spec` too: a second model's would
    # otherwise turn them symbolic) but the span's, marked dynamic.
    options: dict[str, object] = {"fullgraph": True, "dynamic": False, "options": COMPILE_OPTIONS or None}
    if "recompile_limit" in inspect.signature(torch.compile).parameters:  # a limit of its own
        options["recompile_limit"] = recompile_limit()
    return torch.compile(fn, **options)


def _forward(spec: tuple, weights: tuple, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
             key_ok: torch.Tensor | None, span: torch.Tensor, ks: list[torch.Tensor],
             vs: list[torch.Tensor]) -> torch.Tensor:
    """The step: DecoderLM's forward pass for one token per row (model/layers.py's Block, in order)."""
    return _token(spec, weights, token, slot, positions, key_ok, span.shape[0], ks, vs)


def _greedy(spec: tuple, weights: tuple, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
            key_ok: torch.Tensor | None, span: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor],
            banned: torch.Tensor | None, k: int) -> torch.Tensor:
    """`k` greedy steps in a row, each one's argmax the next one's token: (k, B) ids (a step's
    tokens contiguous, as the next call's `token` must be: a strided one is another graph).

    Token j takes cache column slot + j and attends to columns 0..slot + j (the span's length
    + j: still the one dynamic size). `banned`: (V,) 0 or -inf, added to the logits (suppressed
    tokens). Unrolled, so that one compiled call makes k tokens: the per-call costs (guards, the
    caller's loop, sampling) are paid once per k tokens."""
    n, out = span.shape[0], []
    for j in range(k):
        logits = _token(spec, weights, token, slot + j, positions + j, key_ok, n + j, ks, vs)
        if banned is not None:
            logits = logits + banned
        token = logits.argmax(-1)
        out.append(token)
    return torch.stack(out)


def _token(spec: tuple, weights: tuple, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
           key_ok: torch.Tensor | None, n: int, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> torch.Tensor:
    """(B, vocab) logits of one token per row; n: the columns attended, 0..slot (the cached ones
    and this token's)."""
    H, Hkv, D, eps, mlp = spec
    tok_emb, cos_table, sin_table, layers, norm, lm_head = weights
    B = token.shape[0]
    x = F.embedding(token, tok_emb)  # (B, C)
    cos = cos_table[positions].view(B, 1, 1, D)  # once for every layer
    sin = sin_table[positions].view(B, 1, 1, D)
    bias = None  # additive and made once: SDPA would turn a boolean mask into this in every layer
    if key_ok is not None:
        bias = torch.zeros((B, 1, 1, n), dtype=x.dtype, device=x.device).masked_fill_(
            ~key_ok[:, :n].view(B, 1, 1, n), float("-inf"))
    for i, (attn_norm, w_qkv, qk_norm, w_o, mlp_norm, w_up, w_down) in enumerate(layers):
        qkv = F.linear(rms_norm(x, attn_norm, eps), w_qkv)  # (B, (H + 2 Hkv) D)
        if qk_norm is not None:
            q = apply_rope(rms_norm(qkv[:, :H * D].view(B, H, 1, D), qk_norm[0], eps), cos, sin)
            k = apply_rope(rms_norm(qkv[:, H * D:(H + Hkv) * D].view(B, Hkv, 1, D), qk_norm[1], eps), cos, sin)
        else:  # queries and keys rotate together: one rotation per layer
            qk = apply_rope(qkv[:, :(H + Hkv) * D].view(B, H + Hkv, 1, D), cos, sin)
            q, k = qk[:, :H], qk[:, H:]
        v = qkv[:, (H + Hkv) * D:].view(B, Hkv, 1, D)
        ks[i].index_copy_(2, slot, k)
        vs[i].index_copy_(2, slot, v)
        if is_compiling():  # written out, inductor fuses it into its own loops
            y = _attend(q, ks[i][:, :, :n], vs[i][:, :, :n], bias)
        else:  # eager, SDPA's one kernel is cheaper than the five operators
            y = F.scaled_dot_product_attention(q, ks[i][:, :, :n], vs[i][:, :, :n], attn_mask=bias,
                                               enable_gqa=H != Hkv)
        x = x + F.linear(y.view(B, H * D), w_o)  # (B, H, 1, D): the heads side by side
        h = F.linear(rms_norm(x, mlp_norm, eps), w_up)
        if mlp == "swiglu":  # gate and up from one matmul: at one token a row, one weight read is what counts
            h = swiglu(*h.chunk(2, dim=-1))
        else:  # as MLP.forward
            h = F.relu(h).square() if mlp == "relu2" else F.relu(h) if mlp == "relu" else F.gelu(h)
        x = x + F.linear(h, w_down)
    return F.linear(rms_norm(x, norm, eps), lm_head)  # (B, vocab)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """SDPA for one query per head, (B, H, 1, D) over (B, Hkv, n, D), as products and sums: in a
    compiled step these become inductor's own loops, fused with their neighbours, where SDPA is
    an opaque call that transposes and copies its inputs (~10% of a batch-1 compiled step)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    q = q.view(B, Hkv, H // Hkv, 1, D)  # a key/value head's queries side by side (GQA)
    scores = (q * k[:, :, None]).sum(-1) * D ** -0.5  # (B, Hkv, H / Hkv, n)
    if bias is not None:
        scores = scores + bias.view(B, 1, 1, -1)
    weights = scores.softmax(-1)
    return (weights[..., None] * v[:, :, None]).sum(-2).view(B, H, 1, D)


def shape_key(cache: StaticKVCache, key_ok: torch.Tensor | None) -> tuple:
    """What a compiled graph is specialised to: batch, cache length, dtype, padded or not."""
    return (cache.batch_size, cache.max_len, cache.ks[0].dtype if cache.ks else None, key_ok is not None)


def greedy_key(cache: StaticKVCache, key_ok: torch.Tensor | None, banned: torch.Tensor | None) -> tuple:
    """What a compiled greedy chunk is specialised to: shape_key's, suppressed tokens or not, CHUNK."""
    return shape_key(cache, key_ok) + (banned is not None, CHUNK)


_STEPS: weakref.WeakKeyDictionary[nn.Module, DecodeStep] = weakref.WeakKeyDictionary()


def decode_step(model: nn.Module) -> DecodeStep:
    """The model's DecodeStep, made once per model and kept while the model lives (its compiled
    graphs with it)."""
    step = _STEPS.get(model)
    if step is None:
        step = _STEPS[model] = DecodeStep(model)
    return step
