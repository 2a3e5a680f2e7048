"""The concatenated q/k/v and gate/up weights as model/fused.py keeps them now (checked at each
generation's first use, and at every call without a cache: same tensors, versions, addresses and a
sample of their values) against the rule before (kept while the version counters stood still,
unchecked, which read stale weights after writes that leave the counters alone, such as the fused
AdamW kernel's or a copy through `.data`).

At bench/decode_chunks.py's shape (d256, 4 layers, vocab 8192, fp32, batch 1, a 32-token prompt),
greedy generations of 32 and of 256 new tokens, compiled and eager, and a gradient-free forward
pass over 32 tokens without a cache (an evaluation call). The two rules run interleaved, call
after call in one process, so that load on a shared machine hits them alike; the figure is the
median over rounds of the per-round ratio of process CPU times (before / now: below 1 means the
rule now is slower).

    .venv/bin/python bench/fused_keep.py [--rounds 30] [--threads 1] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from candorlm.config import ModelConfig
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.model import DecoderLM, decode, fused, layers

_PROCESS_STORE: dict = {}


@contextmanager
def kept_across_generations() -> Iterator[None]:
    """The rule before: one store for the process, its entries checked against the weights' identity
    and version counters only (kept_weight's check within a generation)."""
    real, real_linear = fused.kept_weight, layers.fused_linear
    patched = lambda _, parts, device_type: real(_PROCESS_STORE, parts, device_type)
    fused.kept_weight = decode.kept_weight = patched
    # calls without a cache kept too
    layers.fused_linear = lambda x, parts, store=None: real_linear(x, parts, _PROCESS_STORE)
    try:
        yield
    finally:
        fused.kept_weight = decode.kept_weight = real
        layers.fused_linear = real_linear


def cpu_time(fn: Callable[[], object], repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="eager generation only (no minute of compiling)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, max_seq_len=512)
    torch.manual_seed(0)
    model = DecoderLM(cfg).eval()
    prompt = torch.randint(10, cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1)).tolist()
    cases: dict[str, tuple[Callable[[], object], int]] = {}
    for n in (32, 256):
        sampling = SamplingConfig(max_new_tokens=n, greedy=True)
        for compiled in ((False, True) if not args.no_compile else (False,)):
            name = f"generate {n:3d} tokens, {'compiled' if compiled else 'eager   '}"
            cases[name] = (lambda s=sampling, c=compiled: generate_ids(model, prompt, s, compile=c), 1)
    ids = torch.tensor(prompt)

    def forward() -> None:
        with torch.no_grad():
            model(ids)
    cases["forward, 32 tokens, no cache  "] = (forward, 5)
    print(f"batch 1, prompt 32, {args.threads} thread(s), {args.rounds} rounds; compiling first" if not args.no_compile
          else f"batch 1, prompt 32, {args.threads} thread(s), {args.rounds} rounds")
    for fn, _ in cases.values():  # compile, warm up; and the two rules make the same tokens
        first = fn()
        with kept_across_generations():
            assert fn() == first or first is None, "the two rules generate different tokens"
    ratios: dict[str, list[float]] = {name: [] for name in cases}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, (fn, repeat) in cases.items():
            order = (False, True) if r % 2 == 0 else (True, False)  # which rule goes first alternates
            t = {}
            for old in order:
                if old:
                    with kept_across_generations():
                        t[old] = cpu_time(fn, repeat)
                else:
                    t[old] = cpu_time(fn, repeat)
            ratios[name].append(t[True] / t[False])
            times[name].append(t[False])
    for name in cases:
        q = statistics.quantiles(ratios[name], n=4)
        print(f"  {name}: {statistics.median(times[name]) * 1e3:7.2f} ms CPU now; before / now "
              f"{statistics.median(ratios[name]):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
