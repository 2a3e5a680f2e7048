"""Where a training step and a decode step spend their time: torch.profiler over candorlm and
`transformers` of the issue's shape (vocab 8192, d_model 256, 4 layers, 4 heads, batch 8 x 256),
ops grouped into matmuls, attention, the fused loss, elementwise and normalisation work, the
optimizer, and the rest. This is the measurement behind "what bounds it" when a speed target
of bench/vs_transformers.py is missed.

For each side and precision it prints milliseconds per step by group, the matmul rate those
milliseconds imply (analytic matmul FLOPs / matmul time) against the measured matmul peak, and
the top operators by self time. Never fails on time.

    .venv/bin/python bench/profile_step.py [--steps 4] [--precision bf16 fp32] [--decode]
"""

from __future__ import annotations

import argparse
import collections
import warnings

from _common import ROOT, cpu_setup, ensure_data
from vs_transformers import BATCH, SEQ, SHAPES, HFTrainer, hf_model

import torch
from torch.profiler import ProfilerActivity, profile

from candorlm.config import ModelConfig, resolve
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.ledger.flops import train_flops_per_token
from candorlm.model import DecoderLM
from candorlm.training.trainer import Trainer

GROUPS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
                "mkldnn", "onednn", "aten::_mkldnn")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::softmax",
                   "aten::_softmax")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("optimizer", ("Optimizer.step", "_fused_adamw", "adamw", "_foreach", "clip_grad", "aten::norm",
                   "linalg_vector_norm")),
    ("copies/casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous",
                      "aten::cat", "aten::fill_", "aten::zero_", "aten::zeros", "aten::empty")),
    ("elementwise/norm", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::rsqrt",
                          "aten::mean", "aten::silu", "aten::neg", "aten::sum", "aten::exp", "aten::where",
                          "aten::embedding", "aten::index", "aten::gelu", "aten::sigmoid", "aten::masked_fill")),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in lowered for k in keys):
            return group
    return "other"


def profiled(fn, steps: int) -> tuple[float, dict[str, float], list[tuple[str, float]]]:
    """Wall ms per call; self-CPU ms per call by group; the top operators by self time."""
    fn()  # warm-up: oneDNN kernel selection, allocator
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    events = prof.key_averages()
    by_group: dict[str, float] = collections.defaultdict(float)
    top = []
    for e in events:
        ms = e.self_cpu_time_total / 1e3 / steps
        by_group[group_of(e.key)] += ms
        top.append((e.key, ms))
    top.sort(key=lambda kv: -kv[1])
    # The profiler's own wall time per step: the sum of self times of the top-level ops is the
    # busy time of the calling thread; report it as the step's wall time under the profiler.
    wall = sum(by_group.values())
    return wall, dict(by_group), top[:12]


def report(label: str, wall: float, groups: dict[str, float], top: list[tuple[str, float]], flops_per_step: float,
           peaks: dict[str, float], precision: str) -> None:
    print(f"\n{label}: {wall:,.1f} ms per step of busy main-thread time (self times summed)")
    for group in ("matmul", "attention", "loss", "elementwise/norm", "copies/casts", "optimizer", "other"):
        ms = groups.get(group, 0.0)
        print(f"  {group:<18}{ms:>9.1f} ms  {ms / wall:6.1%}")
    mm = groups.get("matmul", 0.0) + groups.get("attention", 0.0) + groups.get("loss", 0.0)
    if mm:
        rate = flops_per_step / (mm / 1e3)
        print(f"  analytic FLOPs over matmul+attention+loss time: {rate / 1e9:,.0f} GFLOP/s "
              f"({rate / peaks[precision]:.0%} of the measured {precision} matmul peak "
              f"{peaks[precision] / 1e9:,.0f} GFLOP/s)")
    print("  top operators (self ms per step):")
    for name, ms in top[:8]:
        print(f"    {ms:8.1f}  {name}")


def training(steps: int, precisions: list[str], peaks: dict[str, float]) -> None:
    data = ensure_data()
    shape = SHAPES["issue (d256 L4 H4)"]
    for precision in precisions:
        cfg = resolve("tiny", data={"path": str(data)}, model=shape,
                      train={"precision": precision, "batch_size": BATCH, "seq_len": SEQ})
        ours = Trainer(cfg, ROOT / "runs" / "bench-profile", overwrite=True)
        theirs = HFTrainer(ours, precision)
        flops = train_flops_per_token(ours.model.cfg, SEQ) * BATCH * SEQ
        for name, fn in (("candorlm", ours.train_step), ("transformers", theirs.train_step)):
            wall, groups, top = profiled(fn, steps)
            report(f"training step, {name}, {precision}", wall, groups, top, flops, peaks, precision)
        del ours, theirs


def decoding(peaks: dict[str, float], new_tokens: int = 64) -> None:
    cfg = ModelConfig(vocab_size=8192, **dict(SHAPES["issue (d256 L4 H4)"], max_seq_len=512))
    torch.manual_seed(0)
    ours = DecoderLM(cfg).eval()
    theirs = hf_model(cfg, ours).eval()
    prompts = torch.randint(10, cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
    sampling = SamplingConfig(max_new_tokens=new_tokens, greedy=True)

    @torch.no_grad()
    def run_hf() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            eos_token_id=None, pad_token_id=0, use_cache=True)

    for name, fn in (("candorlm", lambda: generate_ids(ours, prompts.tolist(), sampling)), ("transformers", run_hf)):
        wall, groups, top = profiled(fn, 2)
        per_token = wall / new_tokens
        print(f"\ndecoding, {name}, batch 1, fp32: {per_token:.2f} ms per new token (busy main-thread time)")
        for group in ("matmul", "attention", "elementwise/norm", "copies/casts", "other"):
            ms = groups.get(group, 0.0) / new_tokens
            print(f"  {group:<18}{ms:>8.3f} ms  {ms / per_token:6.1%}")
        print("  top operators (self ms per new token):")
        for op, ms in top[:8]:
            print(f"    {ms / new_tokens:8.3f}  {op}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--decode", action="store_true", help="also profile batch-1 decoding")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    threads, peaks = cpu_setup()
    print(f"torch {torch.__version__}, {threads} threads; measured matmul peak fp32 {peaks['fp32'] / 1e9:,.0f}, "
          f"bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s")
    if not args.skip_train:
        training(args.steps, args.precision, peaks)
    if args.decode:
        decoding(peaks)


if __name__ == "__main__":
    main()
