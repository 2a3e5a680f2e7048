"""Why the model chose a token: gradient x input attribution and one head's attention pattern.

The quick, per-token view behind `POST /v1/explain` and the chat page; `candorlm/explain/` has
the fuller tools (integrated gradients, patching, lens). Both read the model through the same
named hook points (`candorlm.model.hooks`), so neither re-writes its forward pass:

- Attribution (gradient x input; Shrikumar et al. 2016, Simonyan et al. 2013): the score of
  prompt position i for target token t is  sum_c  e_ic * d logit_t / d e_ic  over the input
  embedding e_i. It is the first-order Taylor estimate of how much that position's embedding
  contributes to the target's logit; positive pushed the model towards t. The model runs with
  its `hook_embed` output replaced by a leaf tensor of the embeddings, the derivative's input.
- Attention: the pattern  softmax(Q K^T / sqrt(d_k))  of one layer and head, read at
  `blocks.{layer}.attn.hook_pattern`. While that point is hooked, the attention module computes
  its weights explicitly instead of through the fused kernel; the logits come from a pass
  without it, so they are exactly `model(ids)`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from candorlm.errors import CandorError
from candorlm.model import DecoderLM
from candorlm.model.hooks import hooks
from candorlm.tokenizer import Tokenizer, byte_decoder


@dataclass
class Explanation:
    position: int  # index (in ids) of the explained token; the model predicted it at position - 1
    token_id: int
    logit: float
    probability: float
    rank: int  # 1 = the model's top choice
    attribution: list[float]  # one score per position 0..position-1
    pattern: list[list[float]]  # (T, T) attention of `layer`, `head`; row q sums to 1 over 0..q
    layer: int
    head: int


def forward_keeping_attention_input(model: DecoderLM, emb: torch.Tensor,
                                    layer: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The model's forward pass on embeddings emb (B, T, C) instead of token ids: (logits (B, T, V),
    the normed input of block `layer`'s attention (B, T, C), the rotary tables (cos, sin) it used)."""
    B, T, _ = emb.shape
    kept: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: object) -> None:
        kept["resid_pre"] = x

    # Placeholder ids: hook_embed replaces their embeddings by emb. No mask: plain causal attention.
    ids = torch.zeros(B, T, dtype=torch.long, device=emb.device)
    with hooks(model, {"hook_embed": lambda x, hook: emb, f"blocks.{layer}.hook_resid_pre": keep}):
        logits = model(ids)
    return logits, model.blocks[layer].attn_norm(kept["resid_pre"]), model.rope.span(0, T)


def attention_pattern(model: DecoderLM, attn_input: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                      layer: int, head: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) of one head, (B, T, T), causal: block `layer`'s attention run on
    its input attn_input (B, T, C), its weights read at `blocks.{layer}.attn.hook_pattern`."""
    kept: dict[str, torch.Tensor] = {}

    def keep(pattern: torch.Tensor, hook: object) -> None:
        kept["pattern"] = pattern  # (B, H, T, T)

    with hooks(model, {f"blocks.{layer}.attn.hook_pattern": keep}):
        model.blocks[layer].attn(attn_input, rope)  # causal, no cache: as in the forward pass
    return kept["pattern"][:, head]


def explain_token(model: DecoderLM, ids: list[int], position: int, layer: int = 0, head: int = 0) -> Explanation:
    """Attribution over ids[:position] for the model's logit of ids[position], and the attention
    pattern of (layer, head) over all of ids."""
    cfg = model.cfg
    if not 1 <= position < len(ids):
        raise CandorError(f"the explained token must follow at least one prompt token (position {position} "
                          f"of {len(ids)} tokens)")
    if len(ids) > cfg.max_seq_len:
        raise CandorError(f"{len(ids)} tokens exceed the model's context of {cfg.max_seq_len}")
    if not 0 <= layer < cfg.n_layers:
        raise CandorError(f"layer {layer} does not exist: the model has layers 0..{cfg.n_layers - 1}")
    if not 0 <= head < cfg.n_heads:
        raise CandorError(f"head {head} does not exist: the model has heads 0..{cfg.n_heads - 1}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            ids_t = torch.tensor([ids], dtype=torch.long, device=device)
            emb = model.tok_emb(ids_t).detach().float().requires_grad_(True)  # (1, T, C), the leaf we attribute to
            logits, attn_input, rope = forward_keeping_attention_input(model, emb, layer)
            step = logits[0, position - 1].float()  # the prediction of ids[position]
            target = ids[position]
            (grad,) = torch.autograd.grad(step[target], emb)
        scores = (grad * emb.detach()).sum(-1)[0, :position]
        with torch.no_grad():
            pattern = attention_pattern(model, attn_input.detach(), rope, layer, head)[0]
            step = step.detach()
            probs = step.softmax(-1)
            rank = int((step > step[target]).sum()) + 1
    finally:
        model.train(was_training)
    return Explanation(position=position, token_id=target, logit=float(step[target]),
                       probability=float(probs[target]), rank=rank, attribution=scores.tolist(),
                       pattern=pattern.tolist(), layer=layer, head=head)


def token_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Readable text of each token. A byte-level token that holds only part of a character
    (common for Chinese) is shown as its bytes, e.g. '\\xe4\\xb8', rather than as '�'."""
    byte_of = byte_decoder() if tokenizer.byte_level else {}
    labels = []
    for i in ids:
        text = tokenizer.decode([i], skip_special=False)
        if "\ufffd" in text and byte_of:
            raw = bytes(byte_of[ch] for ch in tokenizer.hf.id_to_token(i) or "" if ch in byte_of)
            text = raw.decode("utf-8", errors="backslashreplace")
        labels.append(text)
    return labels
