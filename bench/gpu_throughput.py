"""The GPU path, measured: the `base` preset (GPT-2 small sized) trained for a fixed number of
steps; prints tokens/s, MFU against the GPU's dense bf16 datasheet peak, peak memory, and what
the path used (bf16 autocast, flash SDPA, fused AdamW, torch.compile, pinned memory), and checks
that the timed steps never made the host wait for the GPU.

bench/gpu.sh installs, prepares the corpus and runs this; by hand:

    python bench/gpu_throughput.py --data DATA [--steps 30] [--warmup 8]
    torchrun --nproc-per-node 8 bench/gpu_throughput.py --data DATA --strategy fsdp
    python bench/gpu_throughput.py --data DATA --dry-run   # the CPU, a tiny model: checks the script

Never fails on time; it fails (exit 1, after printing every figure) only when a timed step made
the host wait for the GPU, or when the model's attention could not run on the flash kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# The CPU dry run: a tiny model, a few steps, the same code path and report.
DRY_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 64}
DRY_TRAIN = {"batch_size": 4, "grad_accum": 2, "seq_len": 64, "precision": "fp32", "compile": False,
             "device": "cpu", "eval_every": 10**6, "save_every": 10**6}


def bf16_peak(device: torch.device) -> tuple[float, str]:
    """The GPU's dense bf16 peak from its datasheet (ledger/estimate.py), else this device's measured peak."""
    from candorlm.ledger.estimate import GPUS
    from candorlm.ledger.hardware import device_name, measured_peak_flops

    name = device_name(device)
    for key in ("h200", "h100", "a100"):
        if key in name.lower():
            hw = GPUS[key]
            if key == "h100" and "pcie" in name.lower():
                return 756e12, "datasheet: H100 PCIe, 756 TFLOP/s dense bf16"
            return hw.peak_flops["bf16"], hw.source
    precision = "bf16" if device.type == "cuda" else "fp32"
    return measured_peak_flops(precision, device), f"measured {precision} matmul peak of {name} (no datasheet entry)"


def flash_check(trainer) -> str:
    """Run the model's forward once with only the flash kernel allowed: an error means some
    attention call could not use it."""
    if trainer.device.type != "cuda":
        return "n/a on the CPU"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from candorlm.device import autocast

    x, y = trainer.sampler.windows.get(range(2))
    x, y = x.to(trainer.device), y.to(trainer.device)
    try:
        with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast(trainer.precision, trainer.device):
            trainer.model(x, targets=y)
    except RuntimeError as exc:
        return f"NOT USED ({str(exc).splitlines()[0]})"
    return "yes (every attention call runs with only the flash kernel allowed)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(trainer, steps: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = trainer.train_step()
    sync(trainer.device)
    return time.perf_counter() - start, loss


def is_compiled(trainer) -> bool:
    if type(trainer.forward).__name__ == "OptimizedModule":
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in trainer.model.modules())


def measure(args: argparse.Namespace) -> dict:
    from candorlm.config import resolve
    from candorlm.ledger.flops import train_flops_per_token
    from candorlm.training.trainer import Trainer

    train = {"strategy": args.strategy, "max_steps": args.warmup + args.steps + 1}
    model: dict = {}
    if args.dry_run:
        train.update(DRY_TRAIN)
        model = dict(DRY_MODEL)
    if args.batch_size:
        train["batch_size"] = args.batch_size
    cfg = resolve(args.preset, data={"path": str(args.data)}, model=model, train=train)
    out = Path(args.out or tempfile.mkdtemp(prefix="candorlm-gpu-bench-"))
    trainer = Trainer(cfg, out, overwrite=True)
    world = trainer.world
    device = trainer.device
    flash = flash_check(trainer)
    # Warm-up: compilation, kernel autotuning, the allocator's pools.
    first_loss = trainer.agree.mean(trainer.train_step()[0])
    for _ in range(max(0, args.warmup - 1)):
        trainer.train_step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.set_sync_debug_mode("error")  # any host sync inside a timed step raises
    host_syncs = "none" if device.type == "cuda" else "n/a on the CPU"
    try:
        seconds, loss = timed_steps(trainer, args.steps)
    except RuntimeError as exc:  # the sync check fired: say where, then time the steps without it
        host_syncs = f"FOUND: {str(exc).splitlines()[0]}"
        torch.cuda.set_sync_debug_mode(0)
        trainer.optimizer.zero_grad(set_to_none=True)
        seconds, loss = timed_steps(trainer, args.steps)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    t = cfg.train
    tokens = args.steps * t.batch_size * t.grad_accum * cfg.seq_len * world.world_size
    tps = tokens / seconds
    fpt = train_flops_per_token(trainer.model.cfg, cfg.seq_len)
    peak, peak_source = bf16_peak(device)
    peak_total = peak * world.world_size
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device)
        memory_what = "torch.cuda.max_memory_allocated, rank 0"
    else:
        import resource

        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        memory_what = "peak RSS of the process (CPU dry run)"
    last_loss = trainer.agree.mean(loss)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
        "processes": world.world_size, "strategy": world.strategy if world.distributed else "single",
        "preset": args.preset if not args.dry_run else f"{args.preset} shape overridden (dry run)",
        "parameters": trainer.model.num_params(), "seq_len": cfg.seq_len,
        "tokens_per_step": t.batch_size * t.grad_accum * cfg.seq_len * world.world_size,
        "timed_steps": args.steps, "seconds": round(seconds, 3),
        "tokens_per_s": round(tps, 1), "model_tflops_per_s": round(tps * fpt / 1e12, 3),
        "mfu": round(tps * fpt / peak_total, 4), "peak_tflops_per_device": round(peak / 1e12, 1),
        "peak_source": peak_source, "peak_memory_gib": round(memory / 2**30, 3), "peak_memory_what": memory_what,
        "precision": trainer.precision, "flash_sdpa": flash,
        "fused_adamw": bool(trainer.optimizer.defaults.get("fused")),
        "torch_compile": is_compiled(trainer),
        "pinned_memory_batches": device.type == "cuda",
        "host_syncs_in_timed_steps": host_syncs,
        "loss_first_last": [round(first_loss, 4), round(last_loss, 4)],
        "torch": torch.__version__,
    }
    world.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data directory from `candorlm prepare`")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation)")
    parser.add_argument("--batch-size", type=int, default=None, help="micro-batch (default: the preset's)")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="with several processes")
    parser.add_argument("--out", default=None, help="scratch run directory (default: a temporary one)")
    parser.add_argument("--dry-run", action="store_true", help="the CPU, a tiny model: checks this script")
    args = parser.parse_args()
    os.environ.setdefault("CANDORLM_PROGRESS", "0")
    result = measure(args)
    if os.environ.get("RANK", "0") != "0":
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print("json " + json.dumps(result))
    if result["host_syncs_in_timed_steps"].startswith("FOUND"):
        raise SystemExit("a timed training step made the host wait for the GPU (see host_syncs_in_timed_steps)")
    if result["flash_sdpa"].startswith("NOT USED"):
        raise SystemExit("flash attention was not used (see flash_sdpa)")


if __name__ == "__main__":
    main()
