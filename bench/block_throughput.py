"""Training tokens/s of candorlm's block against nanoGPT's, per preset width, interleaved in one process.

For each preset (nano, micro, tiny, small, ...) both models get that preset's d_model, layers
and heads, the same batch x sequence of random tokens (vocab 8192, the demo's BPE), bf16
autocast on the CPU (candorlm's default), and each its own optimizer step (candorlm's AdamW
from `build_optimizers`, nanoGPT's fused AdamW) with gradient clipping at 1.0: a whole training
step, as each recipe trains. The two step in turn, one step each, so that whatever else loads
the machine loads both alike; each step is timed on its own. Tokens/s come from each one's
median step time; the ratio is the median over back-to-back pairs of steps, with the quartiles
of the pairs' ratios. Only the ratio is fair while the machine is shared: say so when quoting.

nanoGPT's block (bench/nanogpt.py): one c_attn matmul for q/k/v, one c_fc for the MLP, learned
positions, LayerNorm, GELU. candorlm's: RMSNorm, rotary positions, SwiGLU, Llama's q/k/v/o and
gate/up/down weights (fused at compute time, model/layers.py).

    .venv/bin/python bench/block_throughput.py [--presets nano,micro,tiny,small] [--batch 8]
        [--seq-len 256] [--steps 20] [--warmup 2] [--threads 1] [--precision bf16] [--profile]
        [--compile] [--warm-cache]

--compile: two more contestants, each compiled with torch.compile: candorlm's blocks as its
trainer compiles them (model/compiled.py), and nanoGPT whole, as its train.py does by default.
All four step in turn; the table adds both compiled figures, the ratio of compiled candorlm to
each nanoGPT, and each compiled model's cold compile: the first step's seconds beyond a typical
one, wall and CPU (this process and its compiler subprocesses: on a shared machine the CPU
seconds are what the compile would take alone on one core). Cold means an empty inductor cache,
a fresh directory per process (removed at the end), as on a user's first run: --warm-cache keeps
the usual one instead.

--profile: instead of timing, torch.profiler over a few steps of each model: operator calls
per step and the top operators by self CPU time (what to fix first).
"""

from __future__ import annotations

import argparse
import collections
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import inductor_cache  # also puts the repository on sys.path

VOCAB = 8192


def contestants(preset: str, batch: int, seq_len: int, precision: str = "bf16", seed: int = 0,
                compiled: bool = False) -> dict[str, Callable[[], Any]]:
    """One training-step closure per model, all of `preset`'s shape, on the same random batch;
    `compiled`: also each compiled (candorlm's blocks, nanoGPT whole)."""
    import nanogpt

    from candorlm.config import resolve
    from candorlm.device import autocast
    from candorlm.model import build_model
    from candorlm.model.compiled import compile_blocks
    from candorlm.training.optim import build_optimizers

    cfg = resolve(preset, model={"vocab_size": VOCAB, "max_seq_len": max(seq_len, 16)})
    m = cfg.model

    def ours() -> tuple[torch.nn.Module, list]:
        torch.manual_seed(seed)
        model = build_model(m)
        return model, build_optimizers(model, cfg)

    def theirs() -> tuple[torch.nn.Module, list]:
        torch.manual_seed(seed)
        model = nanogpt.GPT(VOCAB, m.d_model, m.n_layers, m.n_heads, seq_len)
        return model, [nanogpt.optimizer(model)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (batch, seq_len), generator=g)
    y = torch.randint(0, VOCAB, (batch, seq_len), generator=g)
    device = torch.device("cpu")

    def step_of(model: torch.nn.Module, opts: list, forward: Callable | None = None) -> Callable[[], float]:
        forward = model if forward is None else forward

        def step() -> float:
            with autocast(precision, device):
                loss = forward(input_ids=x, targets=y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
            return float(loss.detach())
        return step

    steps = {"candorlm": step_of(*ours()), "nanoGPT": step_of(*theirs())}
    if compiled:
        model, opts = ours()
        steps["candorlm compiled"] = step_of(compile_blocks(model), opts)
        model, opts = theirs()
        steps["nanoGPT compiled"] = step_of(model, opts, torch.compile(model))  # nanoGPT's train.py: compile=True
    return steps


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished subprocesses (inductor's C++ compiler runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(steps: dict[str, Callable[[], Any]], n: int, warmup: int = 2,
          first: dict[str, tuple[float, float]] | None = None) -> dict[str, list[float]]:
    """Seconds of each step of each, stepping them in turn (the i-th steps of all ran back to back).
    `first` receives each one's first step, (wall, CPU) seconds: where a compile happens."""
    for i in range(warmup):
        for name, fn in steps.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            fn()
            if i == 0 and first is not None:
                first[name] = (time.perf_counter() - wall, cpu_seconds() - cpu)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(n):
        # Alternate which goes first, so neither always follows the other's cache footprint.
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def profiled(steps: dict[str, Callable[[], Any]], n: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name, fn in steps.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                fn()
        events = prof.key_averages()
        total_calls = sum(e.count for e in events if e.key.startswith("aten::")) / n
        total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / n
        print(f"\n{name}: {total_calls:,.0f} aten operator calls per step, {total_ms:,.1f} ms self CPU per step")
        rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:25]
        for e in rows:
            print(f"  {e.self_cpu_time_total / 1e3 / n:8.2f} ms {e.count / n:6.0f}x  {e.key}")
        counts = collections.Counter({e.key: e.count // n for e in events if e.key.startswith("aten::")})
        print("  most called:", ", ".join(f"{k} {v}" for k, v in counts.most_common(12)))


def ratio(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """a's speed over b's: the median over back-to-back pairs of steps (a load change hits both of
    a pair alike), with the quartiles of the pairs' ratios as its spread."""
    pairs = sorted(tb / ta for ta, tb in zip(times[a], times[b]))
    q = statistics.quantiles(pairs, n=4)
    return statistics.median(pairs), q[0], q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="nano,micro,tiny,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also candorlm and nanoGPT compiled (torch.compile)")
    ap.add_argument("--warm-cache", action="store_true",
                    help="with --compile: the usual inductor cache, not an empty one")
    args = ap.parse_args()
    with inductor_cache(cold=args.compile and not args.warm_cache):
        run(args)


def run(args: argparse.Namespace) -> None:
    from candorlm.device import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.precision}, batch {args.batch} x "
          f"{args.seq_len}, vocab {VOCAB}, median of {args.steps} interleaved steps each"
          + (f", inductor cache {'warm' if args.warm_cache else 'cold (empty)'}" if args.compile else ""))
    if not args.profile:
        head = f"{'preset':<8}{'shape':<14}{'candorlm tok/s':>15}{'nanoGPT tok/s':>15}{'ratio':>8}  (quartiles)"
        if args.compile:
            head += (f"{'compiled':>10}{'nGPT comp.':>11}{'c/nGPT':>8}{'c/nGPT c.':>10}"
                     f"   cold compile s, wall/CPU: candorlm, nanoGPT")
        print(head)
    for preset in args.presets.split(","):
        steps = contestants(preset, args.batch, args.seq_len, args.precision, compiled=args.compile)
        if args.profile:
            print(f"\n=== {preset}")
            profiled(steps, max(1, args.steps))
            continue
        from candorlm.config import resolve

        m = resolve(preset).model
        first: dict[str, tuple[float, float]] = {}
        times = timed(steps, args.steps, args.warmup, first)
        tokens = args.batch * args.seq_len
        speed = {k: tokens / statistics.median(v) for k, v in times.items()}
        r, q1, q3 = ratio(times, "candorlm", "nanoGPT")
        line = (f"{preset:<8}{f'd{m.d_model} L{m.n_layers} H{m.n_heads}':<14}{speed['candorlm']:>15,.0f}"
                f"{speed['nanoGPT']:>15,.0f}{r:>7.2f}x  ({q1:.2f}-{q3:.2f})")
        if args.compile:
            ours, theirs = "candorlm compiled", "nanoGPT compiled"
            vs_eager, vs_compiled = ratio(times, ours, "nanoGPT"), ratio(times, ours, theirs)

            def compile_s(name: str) -> str:
                typical = statistics.median(times[name])
                wall, cpu = first[name]
                return f"{wall - typical:.0f}/{cpu - typical:.0f}"  # a step's worth taken off both

            line += (f"{speed[ours]:>10,.0f}{speed[theirs]:>11,.0f}{vs_eager[0]:>7.2f}x{vs_compiled[0]:>9.2f}x"
                     f"   {compile_s(ours)}, {compile_s(theirs)}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
