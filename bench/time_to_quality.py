"""Time to quality: the validation bits per byte each recipe reaches in the same time, on this machine.

Contestants train in ONE process, round robin, a chunk of a few seconds each in turn, so that
whatever else loads the machine loads them all alike; each is timed on its own steps only (its
clock stops while the others train and while it is evaluated), and each one's schedule is sized
to its own budget by candorlm's TimeBudget (warmup from its measured step rate, cosine by its own
elapsed time, stop when its time is spent). Every contestant sees the same batches (same seed)
and is scored on the same validation windows at the same fractions of its budget.

Contestants (`--contestants`, comma-separated):
  default  candorlm's default recipe (whatever `resolve("tiny")` builds today)
  today    the recipe as it was before issue 16, pinned here as a named baseline
  nanogpt  a GPT-2-style model from nanoGPT's published recipe (bench/nanogpt.py)
and any variant given as `--variant NAME:section.key=value,section.key=value` (for the lever
ablations: `--variant qknorm:model.qk_norm=true`), a variant of `today`, or with `--base default`
of the default recipe (`--variant lr2x:train.lr=6e-3 --base default`). `data.vocab_size=4096`
trains a variant on the same text tokenized with its own BPE vocabulary (prepared on first use);
bits per byte stay comparable, and it is scored on the same validation text: as many of its
windows as cover the bytes the others' windows cover.
`train.compile=true` compiles the contestant's blocks as the trainer does (model/compiled.py);
its cold compile counts in its own time (its first step), from an empty inductor cache (a fresh
directory, removed at the end, as on a user's first run) unless --warm-cache. On a shared
machine, `--clock cpu --threads 1` times each contestant by its CPU seconds instead of wall
seconds: the load slows a compile's gcc runs and the steps alike in wall time, but a budget in
wall seconds then holds less quiet-machine work, and the fixed compile cost looks larger than it
is; say which clock a figure used.

    .venv/bin/python bench/time_to_quality.py [--budget 150] [--seeds 1337] [--chunk 3]
        [--contestants default,today,nanogpt] [--variant NAME:k=v,...] [--base today|default]
        [--json runs/ttq.json] [--warm-cache] [--clock wall|cpu]

Prints, per contestant: tokens/s, val bits/byte at 25/50/75/100% of the budget (mean over
seeds, with the spread when there are several), and the time each needs to reach the others'
final figure. Timings taken while the machine is shared are only fair as ratios between
contestants of the same run: say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ROOT, ensure_data, inductor_cache


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished subprocesses (inductor's C++ compiler runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


CLOCK = [time.perf_counter]  # each contestant's own clock: wall seconds, or CPU seconds with --clock cpu
EVAL_WINDOWS = 64
POINTS = (0.25, 0.5, 0.75, 1.0)
CURVE = POINTS  # where each contestant is scored (more points: finer time-to-reach, more evaluation)

# The recipe before issue 16, pinned: the tiny preset's shape and schedule with the defaults of then.
TODAY_MODEL = {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 256, "mlp": "swiglu",
               "tie_embeddings": True, "value_embeds": 0, "logit_softcap": 0.0}
TODAY_TRAIN = {"lr": 3e-3, "warmup_steps": 50, "min_lr_ratio": 0.1, "weight_decay": 0.1, "beta1": 0.9,
               "beta2": 0.95, "grad_clip": 1.0, "optimizer": "adamw", "schedule": "cosine",
               # pinned off, so that `today` stays today's if a later default turns them on
               "batch_warmup": 0.0, "seq_warmup": 0.0, "align_windows": False}


@dataclass
class Contestant:
    name: str
    seed: int
    model: Any
    optimizers: list
    sampler: Any
    budget_s: float
    peak_lr: float
    warmup: int
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    schedule: str = "cosine"
    batch_warmup: float = 0.0  # train.batch_warmup / seq_warmup: ramps (candorlm/training/ramp.py)
    seq_warmup: float = 0.0
    data: Path | None = None  # its own prepared data (a data.vocab_size variant); None: the shared one
    own_s: float = 0.0
    steps: int = 0
    tokens: int = 0
    curve: list = field(default_factory=list)  # (own seconds, bits per byte)
    done: bool = False
    next_point: int = 0

    def __post_init__(self) -> None:
        from candorlm.training.budget import TimeBudget

        self.budget = TimeBudget(seconds=self.budget_s, peak_lr=self.peak_lr, min_lr_ratio=self.min_lr_ratio,
                                 max_warmup=self.warmup, clock=lambda: self.own_s,
                                 schedule=self.schedule)
        self.budget.begin(0)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])

    def step(self, precision: str, device) -> None:
        import torch

        from candorlm.device import autocast

        start = CLOCK[0]()
        scale = self.budget.lr(self.steps) / self.peak_lr
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        if self.batch_warmup or self.seq_warmup:
            from candorlm.training.ramp import batch_shape, ramped_batch

            progress = self.budget.elapsed() / max(self.budget.end(), 1e-9)
            x, y = ramped_batch(self.sampler, *batch_shape(self.sampler.batch_size, self.sampler.windows.seq_len,
                                                           progress, self.batch_warmup, self.seq_warmup))
        else:
            x, y = self.sampler.next_batch()
        with autocast(precision, device):
            loss = self.model(input_ids=x, targets=y)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.steps += 1
        self.tokens += x.numel()
        self.own_s += CLOCK[0]() - start
        self.done = self.budget.after_step(self.steps)


def build(name: str, overrides: dict[str, dict[str, Any]], seed: int, data: Path, batch: int, seq_len: int,
          budget_s: float, shape: dict[str, Any], base: str = "today") -> Contestant:
    import torch

    from candorlm.config import resolve
    from candorlm.model import build_model
    from candorlm.model.compiled import compile_blocks
    from candorlm.shards import BatchSampler, ShardSet
    from candorlm.training.optim import build_optimizers

    data_keys = dict(overrides.get("data", {}))
    if set(data_keys) - {"vocab_size"}:
        raise SystemExit(f"{name}: only data.vocab_size can vary, not {sorted(set(data_keys) - {'vocab_size'})}")
    own_data = ensure_data(int(data_keys["vocab_size"])) if data_keys else None
    data = own_data or data
    shards = ShardSet(data)
    vocab = shards.tokenizer.vocab_size
    train_keys = dict(overrides.get("train", {}))
    batch = int(train_keys.pop("batch_size", batch))  # a variant's own batch (train.batch_size=16)
    sampler = BatchSampler(shards.windows("train", seq_len), batch, seed)
    torch.manual_seed(seed)
    if name == "nanogpt":
        import nanogpt

        d = dict(TODAY_MODEL, **shape)
        model = nanogpt.GPT(vocab, d["d_model"], d["n_layers"], d["n_heads"], seq_len)
        return Contestant(name, seed, model, [nanogpt.optimizer(model)], sampler, budget_s, peak_lr=1e-3, warmup=100)
    if name == "default" or (base == "default" and name not in ("today",)):  # the default, or a variant of it
        cfg = resolve("tiny", model={**shape, "vocab_size": vocab, **overrides.get("model", {})},
                      train={"seed": seed, **train_keys})
    else:  # today, or a variant of it
        model_keys = {**TODAY_MODEL, **shape, "vocab_size": vocab, **overrides.get("model", {})}
        cfg = resolve("tiny", model=model_keys, train=dict(TODAY_TRAIN, seed=seed, **train_keys))
    model = build_model(cfg.model)
    t = cfg.train
    if t.compile:  # as the trainer compiles on the CPU; the compile is paid in its first step, on its clock
        compile_blocks(model)
    if t.align_windows:
        sampler = BatchSampler(shards.windows("train", seq_len, aligned=True), batch, seed)
    return Contestant(name, seed, model, build_optimizers(model, cfg), sampler, budget_s, peak_lr=t.lr,
                      warmup=t.warmup_steps, min_lr_ratio=t.min_lr_ratio, clip=t.grad_clip, schedule=t.schedule,
                      batch_warmup=t.batch_warmup, seq_warmup=t.seq_warmup, data=own_data)


def parse_variant(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    from candorlm.config import merge, parse_override

    name, _, sets = text.partition(":")
    out: dict[str, Any] = {}
    for item in filter(None, sets.split(",")):
        out = merge(out, parse_override(item))
    return name, out


def reach_time(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first own-time at which a curve is at or below `target` (linear between points)."""
    prev = None
    for t, v in curve:
        if v <= target:
            if prev is None:
                return t
            (t0, v0) = prev
            return t0 + (t - t0) * (v0 - target) / (v0 - v) if v0 != v else t
        prev = (t, v)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from candorlm.device import keep_freed_memory, resolve_precision, set_threads
    from candorlm.evaluate import evaluate_bpb
    from candorlm.shards import ShardSet

    threads = set_threads(args.threads)
    keep_freed_memory()
    data = ensure_data()
    shards = ShardSet(data)
    val = shards.windows("val", args.seq_len)
    token_bytes = shards.tokenizer.token_byte_lengths()
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    variants = dict(parse_variant(v) for v in args.variant)
    names = [n for n in args.contestants.split(",") if n] + list(variants)
    shape = parse_variant("shape:" + args.model)[1].get("model", {}) if args.model else {}
    if args.seq_len > shape.get("max_seq_len", TODAY_MODEL["max_seq_len"]):
        shape["max_seq_len"] = args.seq_len
    field = [build(n, variants.get(n, {}), s, data, args.batch_size, args.seq_len, args.budget, shape, args.base)
             for s in args.seeds for n in names]

    def scoring(own: Path | None) -> tuple[Any, Any, int]:
        """Validation windows, token byte lengths and a token count covering the same text for all."""
        if own is None:
            return val, token_bytes, EVAL_WINDOWS * args.seq_len
        mine = ShardSet(own)
        share = mine.meta.tokens["val"] / shards.meta.tokens["val"]  # the same validation text
        return mine.windows("val", args.seq_len), mine.tokenizer.token_byte_lengths(), \
            round(EVAL_WINDOWS * share) * args.seq_len

    scorers = {c.data: scoring(c.data) for c in field}

    def score(c: Contestant) -> None:
        windows, nbytes, max_tokens = scorers[c.data]
        bpb = evaluate_bpb(c.model, windows, nbytes, batch_size=16, max_tokens=max_tokens,
                           precision=precision)["bpb"]
        c.model.train()
        c.curve.append((round(c.own_s, 2), round(bpb, 4)))

    wall = time.perf_counter()
    while not all(c.done for c in field):
        for c in field:
            if c.done:
                continue
            until = time.perf_counter() + args.chunk
            while not c.done and time.perf_counter() < until:
                c.step(precision, device)
                if c.next_point < len(CURVE) - 1 and c.own_s >= CURVE[c.next_point] * args.budget:
                    score(c)
                    c.next_point += 1
            if c.done:
                score(c)  # the final figure, at the end of its budget
        print(f"  {time.perf_counter() - wall:6.0f} s: " + ", ".join(
            f"{c.name}/{c.seed} {c.own_s:.0f}s" for c in field), flush=True)
    return summarize(field, names, args, precision, threads, time.perf_counter() - wall)


def at(curve: list[tuple[float, float]], t: float) -> float:
    """The curve's value at own-time t (the nearest point at or after it)."""
    return next((v for s, v in curve if s >= t - 1e-6), curve[-1][1])


def summarize(field: list[Contestant], names: list[str], args: argparse.Namespace, precision: str, threads: int,
              wall: float) -> dict[str, Any]:
    rows = {}
    for name in names:
        runs = [c for c in field if c.name == name]
        finals = [c.curve[-1][1] for c in runs]
        rows[name] = {
            "tokens_per_s": statistics.mean(c.tokens / c.own_s for c in runs),
            "params": sum(p.numel() for p in runs[0].model.parameters()),
            "steps": statistics.mean(c.steps for c in runs),
            "own_s": statistics.mean(c.own_s for c in runs),
            "points": {f"{p:g}": statistics.mean(at(c.curve, p * args.budget) for c in runs) for p in POINTS},
            "final": statistics.mean(finals),
            "spread": (max(finals) - min(finals)) if len(finals) > 1 else None,
            "curves": {c.seed: c.curve for c in runs},
        }
    reach = {}
    for a in names:
        for b in names:
            if a == b:
                continue
            times = [reach_time(c.curve, rows[b]["final"]) for c in field if c.name == a]
            reach[f"{a}->{b}"] = None if any(t is None for t in times) else statistics.mean(times)
    return {"budget_s": args.budget, "base": args.base, "load": [args.load_start, [round(x, 1) for x in os.getloadavg()]],
            "model": args.model or "tiny preset shape", "seeds": args.seeds, "batch": args.batch_size, "seq_len": args.seq_len,
            "precision": precision, "threads": threads, "chunk_s": args.chunk, "wall_s": round(wall, 1),
            "rows": rows, "reach": reach, "command": args.command, "clock": args.clock}


def table(doc: dict[str, Any]) -> str:
    b = doc["budget_s"]
    head = ["contestant", "params", "tokens/s", "steps"] + [f"val bpb at {p * b:.0f} s" for p in POINTS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, r in doc["rows"].items():
        cells = [name, f"{r['params'] / 1e6:.2f}M", f"{r['tokens_per_s']:,.0f}", f"{r['steps']:.0f}"]
        cells += [f"{r['points'][f'{p:g}']:.3f}" for p in POINTS[:-1]]
        final = f"**{r['final']:.3f}**" + (f" ± {r['spread'] / 2:.3f}" if r["spread"] is not None else "")
        lines.append("| " + " | ".join(cells + [final]) + " |")
    names = list(doc["rows"])
    lines += ["", "time each contestant (row) needs to reach another's (column) final figure, in its own seconds:", "",
              "| reaches -> | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for a in names:
        cells = []
        for n in names:
            t = doc["reach"].get(f"{a}->{n}")
            cells.append("-" if a == n else f"> {b:.0f} s" if t is None else f"{t:.0f} s ({t / b:.0%})")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=150.0, help="seconds of training per contestant")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1337])
    ap.add_argument("--chunk", type=float, default=3.0, help="seconds per turn in the round robin")
    ap.add_argument("--contestants", default="default,today,nanogpt")
    ap.add_argument("--variant", action="append", default=[], help="NAME:section.key=value,... (a variant of --base)")
    ap.add_argument("--base", choices=("today", "default"), default="today",
                    help="the recipe the variants change (default: today's, the pinned baseline)")
    ap.add_argument("--model", default="", help="shape for every contestant, as model.key=value,... "
                    "(default: the tiny preset's, d_model 128, 4 layers, 4 heads)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores); on a "
                    "machine shared with other work, 1 thread often beats 2 fighting for the cores")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="each contestant's own time: wall seconds (on a quiet machine), or the CPU seconds of "
                    "this process and its compiler subprocesses (one thread on a shared core: what a quiet core would "
                    "take, so that a compile's fixed cost is not inflated against the budget by the load)")
    ap.add_argument("--warm-cache", action="store_true", help="compiled contestants use the usual inductor cache, "
                    "not an empty one")
    ap.add_argument("--json", type=Path, default=ROOT / "runs" / "time_to_quality.json")
    args = ap.parse_args()
    args.command = "bench/time_to_quality.py " + " ".join(sys.argv[1:])
    args.load_start = [round(x, 1) for x in os.getloadavg()]  # the machine's load: say it with every figure
    if args.clock == "cpu":
        CLOCK[0] = cpu_seconds
    with inductor_cache(cold=not args.warm_cache):
        doc = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    print(f"\nshape: {doc['model']}; {doc['budget_s']:.0f} s per contestant, batch {doc['batch']} x {doc['seq_len']}, {doc['precision']}, "
          f"{doc['threads']} threads, seeds {doc['seeds']}, {doc['clock']} seconds, one process, round robin in {doc['chunk_s']:.0f}-s chunks "
          f"({doc['wall_s']:.0f} s wall); val bits/byte on the first {EVAL_WINDOWS} validation windows; "
          f"load average (1, 5, 15 min) {doc['load'][0]} at the start, {doc['load'][1]} at the end\n")
    print(table(doc))
    print(f"\n{doc['command']}  ->  {args.json}")


if __name__ == "__main__":
    main()
