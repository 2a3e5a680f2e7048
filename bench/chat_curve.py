"""How fast a chat model learns each skill: reading exact match, sentiment accuracy and the
degenerate share on a fixed set of dev turns, measured every N optimizer steps of one training.

    python bench/chat_curve.py --tokenizer char --set model.max_seq_len=320 --lr 2e-3 --minutes 12 --every 40

The model and data are `finetune --task chat --data builtin:chat`'s (from scratch: the preset and
tokenizer given; with --run: that pretrained run), the optimizer is the trainer's (AdamW, decay on
matrices only, gradient clipping, bf16 autocast where the CPU has it). The learning rate warms up
over --warmup steps and then stays at its peak (no decay), so each point is what the steps so far
bought without the final anneal that a scheduled run adds: the curve is a lower bound for a run
of that length. Scoring is `eval --task chat`'s (greedy, <|end|> stops, no repeated 3-gram) on
--limit dev turns taken round-robin by kind, so it never reads the test split.

Prints one JSON line per point: steps, examples seen, training CPU seconds and wall seconds
(scoring excluded), the last interval's mean loss, and the right share per kind of turn.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="pretrained decoder run to start from (default: from scratch)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokenizer", default="char", help="from scratch: bpe or char")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="section.key=value")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--prompt-loss", type=float, default=0.0, help="weight of the loss on non-assistant tokens")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall minutes (scoring excluded)")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=50, help="score every N steps")
    parser.add_argument("--limit", type=int, default=60, help="dev turns scored, round-robin by kind")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()

    from candorlm.config import RunConfig, TrainConfig
    from candorlm.device import autocast, cpu_has_bf16, set_threads
    from candorlm.tasks import chat
    from candorlm.tasks.base import load_base
    from candorlm.tasks.chat_eval import MAX_REPLY_TOKENS, replies, score_turns, turns
    from candorlm.training.optim import build_optimizer

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    base = load_base(args.run, preset=args.preset, arch="decoder", overrides=args.overrides)
    prepared = chat.prepare(base, chat.BUILTIN, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                            prompt_loss=args.prompt_loss)
    model, tok, cfg = prepared.model, prepared.tokenizer, prepared.model_config
    splits, _ = chat.load_splits(chat.BUILTIN)
    items = turns(tok, splits["dev"], cfg.max_seq_len, MAX_REPLY_TOKENS, args.limit)
    train_cfg = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            warmup_steps=args.warmup, weight_decay=0.01, beta2=0.98)
    optimizer = build_optimizer(model, RunConfig(model=cfg, train=train_cfg))
    precision = "bf16" if cpu_has_bf16() else "fp32"
    device = torch.device("cpu")
    rng = np.random.default_rng(args.seed)
    n = len(prepared.train)
    print(json.dumps({"setup": {"params": sum(p.numel() for p in model.parameters()), "vocab": tok.vocab_size,
                                "tokenizer": tok.kind, "train": n, "dropped": prepared.info["dropped_too_long"],
                                "dev_turns": len(items), "precision": precision, "threads": args.threads,
                                "overrides": args.overrides, "lr": args.lr, "prompt_loss": args.prompt_loss, "run": args.run,
                                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}}), flush=True)

    def score(step: int, seen: int, cpu: float, wall: float, losses: list[float]) -> None:
        scored = score_turns(replies(model, tok, [t["prompt"] for t in items]), items)
        kinds = {k: v.get("label_accuracy", v.get("exact_match")) for k, v in scored["by_kind"].items()}
        f1 = {k: v["char_f1"] for k, v in scored["by_kind"].items() if "char_f1" in v}
        print(json.dumps({"step": step, "examples": seen, "epochs": round(seen / n, 3), "train_cpu_s": round(cpu, 1),
                          "train_wall_s": round(wall, 1), "loss": round(sum(losses) / max(len(losses), 1), 4),
                          "right": kinds, "char_f1": f1, "degenerate": scored["degenerate"],
                          "load": os.getloadavg()[0]}, ensure_ascii=False), flush=True)

    cpu = wall = 0.0
    step = seen = 0
    losses: list[float] = []
    score(0, 0, 0.0, 0.0, [])
    order = rng.permutation(n)
    at = 0
    model.train()
    while step < args.max_steps and wall < args.minutes * 60:
        c0, w0 = time.process_time(), time.perf_counter()
        if at + args.batch_size > n:
            order, at = rng.permutation(n), 0
        batch = [prepared.train[j] for j in order[at:at + args.batch_size]]
        at += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        with autocast(precision, device):
            loss = chat.loss(model, batch, device, prepared)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        losses.append(value if math.isfinite(value) else float("nan"))
        step, seen = step + 1, seen + len(batch)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        if step % args.every == 0:
            score(step, seen, cpu, wall, losses)
            losses = []
            model.train()
    if step % args.every:
        score(step, seen, cpu, wall, losses)


if __name__ == "__main__":
    main()
