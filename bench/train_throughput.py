"""Training throughput: tokens/s, MFU against this device's measured matmul peak, peak memory.

For the `tiny` and `small` presets in fp32 and bf16, on People's Daily (8k BPE), each in its own
process so that peak memory is that configuration's alone. Prints a table; never fails on time.

    .venv/bin/python bench/train_throughput.py [--steps 10] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import ROOT, ensure_data, peak_rss_mib


def measure(preset: str, precision: str, steps: int, batch_size: int) -> dict:
    import torch

    from candorlm.config import resolve
    from candorlm.ledger.flops import train_flops_per_token
    from candorlm.ledger.hardware import measured_peak_flops
    from candorlm.training.trainer import Trainer

    cfg = resolve(preset, data={"path": str(ensure_data())},
                  train={"precision": precision, "batch_size": batch_size})
    trainer = Trainer(cfg, ROOT / "runs" / "bench-train", overwrite=True)
    for _ in range(3):  # warm-up: allocator, oneDNN kernel selection
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    seconds = time.perf_counter() - start
    tokens = steps * batch_size * cfg.seq_len
    tps = tokens / seconds
    flops = train_flops_per_token(trainer.model.cfg, cfg.seq_len) * tps
    return {
        "preset": preset, "precision": trainer.precision, "params_m": trainer.model.num_params() / 1e6,
        "seq_len": cfg.seq_len, "batch": batch_size, "tokens_per_s": tps,
        "achieved_tflops": flops / 1e12,
        "mfu": flops / measured_peak_flops(trainer.precision),
        "peak_fp32_tflops": measured_peak_flops("fp32") / 1e12,
        "peak_bf16_tflops": measured_peak_flops("bf16") / 1e12,
        "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.steps, args.batch_size)))
        return
    ensure_data()
    rows = []
    for preset in ("tiny", "small"):
        for precision in ("fp32", "bf16"):
            out = subprocess.run([sys.executable, __file__, "--one", preset, precision, "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"peak matmul: fp32 {r0['peak_fp32_tflops'] * 1e3:.0f} GFLOP/s, bf16 {r0['peak_bf16_tflops'] * 1e3:.0f} GFLOP/s "
          f"({r0['threads']} threads)")
    print(f"{'preset':<7}{'params':>8}{'prec':>6}{'batch x seq':>13}{'tokens/s':>11}{'GFLOP/s':>9}{'MFU':>7}{'peak RSS':>11}")
    for r in rows:
        print(f"{r['preset']:<7}{r['params_m']:>7.1f}M{r['precision']:>6}{r['batch']:>6} x {r['seq_len']:<4}"
              f"{r['tokens_per_s']:>11,.0f}{r['achieved_tflops'] * 1e3:>9.0f}{r['mfu']:>7.1%}{r['peak_rss_mib']:>8,.0f} MiB")


if __name__ == "__main__":
    main()
