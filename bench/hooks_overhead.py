"""What hook points cost: training-step time of the `tiny` preset shape with the hook points
present but unused, against the same model with them compiled out (bare identities), and, for
scale, with every point recorded and with the attention pattern recorded (explicit attention).

The variants run interleaved, round after round, so that load on a shared machine hits them
alike; the table shows the median step time and its ratio to the compiled-out peer.

    .venv/bin/python bench/hooks_overhead.py [--rounds 9] [--steps 3] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from candorlm.config import resolve
from candorlm.model import DecoderLM, lm_loss
from candorlm.model.hooks import HookPoint, compile_out_hook_points, hook_points, hooks


def make_model(vocab: int, compiled_out: bool) -> DecoderLM:
    torch.manual_seed(0)
    model = DecoderLM(resolve("tiny").model.model_copy(update={"vocab_size": vocab}))
    return compile_out_hook_points(model) if compiled_out else model


def step_time(model: DecoderLM, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int, attach: dict) -> float:
    start = time.perf_counter()
    with hooks(model, attach):
        for _ in range(steps):
            loss = lm_loss(model(x[:, :-1]), x[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    seq = resolve("tiny").model.max_seq_len
    x = torch.randint(0, args.vocab, (args.batch_size, seq + 1))
    keep = lambda t, hook: None  # noqa: E731  (reads the activation, changes nothing)
    points = list(hook_points(make_model(args.vocab, False)))
    variants = {
        "hook points compiled out": (make_model(args.vocab, True), {}),
        "hook points, none active": (make_model(args.vocab, False), {}),
        "every point but the pattern read": (make_model(args.vocab, False),
                                             {n: keep for n in points if not n.endswith("hook_pattern")}),
        "attention pattern read (explicit attention)": (make_model(args.vocab, False),
                                                        {"blocks.*.attn.hook_pattern": keep}),
    }
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, (m, _) in variants.items()}
    for name, (model, attach) in variants.items():  # warm-up
        step_time(model, optimizers[name], x, 2, attach)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (model, attach) in variants.items():
            times[name].append(step_time(model, optimizers[name], x, args.steps, attach))
        print(f"round {r + 1}: " + ", ".join(f"{v[-1] * 1e3:.0f}" for v in times.values()) + " ms", flush=True)
    point = HookPoint()
    t = torch.zeros(1)
    per_call = min(timeit.repeat(lambda: point(t), number=100_000, repeat=5)) / 100_000
    calls = len(points)  # each point is called once per forward
    base = statistics.median(times["hook points compiled out"])
    print(f"tiny preset shape, batch {args.batch_size} x {seq} tokens, fp32, {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds of {args.steps} steps, interleaved")
    print(f"{'variant':<46}{'median step':>13}{'min':>10}{'ratio':>8}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<46}{med * 1e3:>10.1f} ms{min(values) * 1e3:>7.1f} ms{med / base:>8.3f}")
    print(f"one unused hook point call: {per_call * 1e9:.0f} ns; {calls} calls per forward = "
          f"{per_call * calls * 1e6:.1f} us per step, {per_call * calls / base:.5%} of a compiled-out step")


if __name__ == "__main__":
    main()
