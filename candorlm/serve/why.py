"""Why the model chose a token: gradient x input attribution and one head's attention pattern.

Small and real, for the serving API and the chat page until `candorlm/explain/` lands; the
lead can point `POST /v1/explain` there without changing its JSON.

- Attribution (gradient x input; Shrikumar et al. 2016, Simonyan et al. 2013): the score of
  prompt position i for target token t is  sum_c  e_ic * d logit_t / d e_ic  over the input
  embedding e_i. It is the first-order Taylor estimate of how much that position's embedding
  contributes to the target's logit; positive pushed the model towards t.
- Attention: the pattern  softmax(Q K^T / sqrt(d_k))  of one layer and head, computed
  explicitly from that layer's queries and keys (rotary positions applied, causal mask), the
  same numbers that the model's scaled-dot-product attention weights its values with.

The forward pass here walks the model's own modules (embedding, blocks, final norm, head) so
that the embeddings can be a leaf tensor and one block's attention input can be kept; a test
checks it gives the same logits as `model(ids)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from candorlm.errors import CandorError
from candorlm.model import DecoderLM
from candorlm.model.layers import apply_rope
from candorlm.tokenizer import Tokenizer, _bytes_to_unicode  # GPT-2's byte map, to label partial characters


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
    """(logits (B, T, V), the normed input of block `layer`'s attention (B, T, C), rope) from embeddings."""
    B, T, _ = emb.shape
    positions = torch.arange(T, device=emb.device).expand(B, T)
    rope = model.rope(positions)
    x, kept = emb, emb
    for i, block in enumerate(model.blocks):
        if i == layer:
            kept = block.attn_norm(x)
        x = block(x, rope)  # no cache, no mask: plain causal attention
    return model.lm_head(model.norm(x)), kept, rope


def attention_pattern(model: DecoderLM, attn_input: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                      layer: int, head: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) for one head, (B, T, T), with the causal mask."""
    attn = model.blocks[layer].attn
    B, T, _ = attn_input.shape
    D = attn.head_dim
    q = attn.q_proj(attn_input).view(B, T, attn.n_heads, D).transpose(1, 2)  # (B, H, T, D)
    k = attn.k_proj(attn_input).view(B, T, attn.n_kv_heads, D).transpose(1, 2)  # (B, Hkv, T, D)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    kv_head = head // (attn.n_heads // attn.n_kv_heads)  # grouped-query attention shares K among heads
    scores = q[:, head] @ k[:, kv_head].transpose(-1, -2) / math.sqrt(D)  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


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
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()} if tokenizer.byte_level else {}
    labels = []
    for i in ids:
        text = tokenizer.decode([i], skip_special=False)
        if "\ufffd" in text and byte_of:
            raw = bytes(byte_of[ch] for ch in tokenizer.hf.id_to_token(i) or "" if ch in byte_of)
            text = raw.decode("utf-8", errors="backslashreplace")
        labels.append(text)
    return labels
