"""A known circuit, found: induction heads in a small attention-only transformer.

Trains a 2-layer attention-only model (a DecoderLM whose MLPs are replaced by zero) on
sequences <bos> r_1..r_n r_1..r_n of random tokens. The first half is unpredictable; the
second half is predictable only by looking back to the token after the previous occurrence
of the current token: the induction mechanism (Olsson et al. 2022). Then, with candorlm's
explain tools, it prints

- the loss on the first and on the repeated half, before and after training;
- the induction (and previous-token) score of every head, before and after training;
- activation patching per head: restore one head's output from a clean (repeated) run into a
  corrupted run whose first half is different, and measure how much of the clean
  log-probability of the second half comes back.

    .venv/bin/python bench/induction.py [--steps 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
from torch import nn

from candorlm.config import ModelConfig
from candorlm.explain.attention import (attention_patterns, induction_scores_from, previous_token_scores,
                                        repeated_random_tokens)
from candorlm.explain.patching import patch_heads
from candorlm.model import DecoderLM

BOS = 0


class NoMLP(nn.Module):
    """Stands in for a block's feed-forward network: adds nothing to the residual stream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def attention_only_model(vocab: int, n: int, seed: int) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, max_seq_len=2 * n + 1))
    for block in model.blocks:
        block.mlp = NoMLP()
    return model


def batch(n: int, size: int, vocab: int, seed: int) -> torch.Tensor:
    return repeated_random_tokens(n, size, list(range(1, vocab)), BOS, seed)


def half_losses(model: nn.Module, ids: torch.Tensor, n: int) -> tuple[float, float]:
    """Mean next-token loss predicting the first half, and the repeated (second) half."""
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]  # position t predicts token t+1
    return float(nll[:, 1:n].mean()), float(nll[:, n + 1:].mean())  # skip r_1 and the first repeat r_1


def scores(model: nn.Module, n: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch(n, 16, vocab, seed)
    patterns = attention_patterns(model, ids)
    return induction_scores_from(patterns, n, 1), previous_token_scores(patterns)


def offsets(model: nn.Module, n: int, vocab: int, seed: int) -> torch.Tensor:
    """Layer 0's mean attention per head to: its own position, the previous one, and <bos>."""
    patterns = attention_patterns(model, batch(n, 16, vocab, seed))[0]  # (B, H, T, T)
    t = torch.arange(1, patterns.shape[-1])
    return torch.stack([patterns[..., t, t].mean((0, 2)), patterns[..., t, t - 1].mean((0, 2)),
                        patterns[..., t, 0].mean((0, 2))], dim=1).T  # (3, H)


def table(title: str, values: torch.Tensor, rows: list[str] | None = None) -> str:
    lines = [title, " " * 9 + "".join(f"  head {h}" for h in range(values.shape[1]))]
    for layer, row in enumerate(values.tolist()):
        name = rows[layer] if rows else f"layer {layer}"
        lines.append(f"{name:<9}" + "".join(f"{v:8.3f}" for v in row))
    return "\n".join(lines)


def train(model: nn.Module, n: int, vocab: int, steps: int, seed: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        ids = batch(n, 32, vocab, int(torch.randint(1 << 30, (1,), generator=g)))
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            first, second = half_losses(model, batch(n, 64, vocab, 10_000), n)
            print(f"  step {step + 1:5d}: loss first half {first:.3f}, repeated half {second:.3f}")
    model.eval()
    return time.perf_counter() - start


def patching_check(model: nn.Module, n: int, vocab: int, seed: int) -> torch.Tensor:
    """Per-head share of the repeated half's clean log-probability restored by patching."""
    clean = batch(n, 16, vocab, seed)
    corrupted = clean.clone()
    corrupted[:, 1:n + 1] = batch(n, 16, vocab, seed + 7)[:, 1:n + 1]  # a different first half
    targets = clean[:, n + 2:]  # tokens the repeated half predicts (from its second position on)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, n + 1:-1].float(), -1)
        return logp.gather(-1, targets[..., None])[..., 0].mean(-1)

    return patch_heads(model, clean, corrupted, metric).effect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n", type=int, default=24, help="length of the random half")
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the matrices are tiny: more threads only add synchronisation
    n, vocab = args.n, args.vocab
    model = attention_only_model(vocab, n, args.seed)
    print(f"attention-only model: 2 layers x 4 heads, d_model 64, vocabulary {vocab}; sequences <bos> + 2 x {n} tokens")
    print(f"uniform guessing: loss {torch.log(torch.tensor(vocab - 1.0)):.3f}")
    before_first, before_second = half_losses(model, batch(n, 64, vocab, 10_000), n)
    ind_before, prev_before = scores(model, n, vocab, 20_000)
    wall = train(model, n, vocab, args.steps, args.seed)
    after_first, after_second = half_losses(model, batch(n, 64, vocab, 10_000), n)
    ind_after, prev_after = scores(model, n, vocab, 20_000)
    print(f"trained {args.steps} steps in {wall:.1f} s")
    print(f"loss, first half:    before {before_first:.3f}  after {after_first:.3f}")
    print(f"loss, repeated half: before {before_second:.3f}  after {after_second:.3f}  "
          f"(drop {before_second - after_second:.3f})")
    print(table("induction score before training", ind_before))
    print(table("induction score after training", ind_after))
    print(table("previous-token score after training", prev_after))
    print(table("layer 0 after training: mean attention to", offsets(model, n, vocab, 20_000),
                ["itself", "previous", "<bos>"]))
    effect = patching_check(model, n, vocab, 30_000)
    print(table("patching: share of the repeated half's log-probability restored by one head", effect))
    best = divmod(int(ind_after.argmax()), ind_after.shape[1])
    top_patch = divmod(int(effect.argmax()), effect.shape[1])
    found = int((ind_after > 0.5).sum())
    print(f"heads with induction score > 0.5: before {int((ind_before > 0.5).sum())}, after {found}")
    print(f"strongest induction head: layer {best[0]} head {best[1]} (score {ind_after.max():.3f}); "
          f"largest patching effect: layer {top_patch[0]} head {top_patch[1]} ({effect.max():.3f})")
    induction_heads = ind_after > 0.5
    print(f"patching effect of the induction heads together vs the rest: "
          f"{effect[induction_heads].sum():.3f} vs {effect[~induction_heads].sum():.3f}")
    confirmed = found > 0 and bool(induction_heads[top_patch]) and int((ind_before > 0.5).sum()) == 0
    print("verdict: " + ("induction heads found, and patching confirms them" if confirmed else
                         "NOT confirmed: see the tables above"))


if __name__ == "__main__":
    main()
