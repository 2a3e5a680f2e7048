"""Helpers shared by the bench scripts: the demo's prepared data, and peak RSS."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "data" / "peoples-daily"


def ensure_data() -> Path:
    """The demo's People's Daily shards (8k BPE), prepared on first use."""
    from candorlm.prepare import prepare

    if not (DATA / "meta.json").is_file():
        prepare(["builtin:peoples-daily"], DATA, tokenizer="bpe", vocab_size=8192, overwrite=True)
    return DATA


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_setup(threads: int | None = None) -> tuple[int, dict[str, float]]:
    """Threads as the trainer sets them (or `threads`), freed memory kept (as in training), and
    the measured fp32 and bf16 matmul peaks that MFU is counted against."""
    from candorlm.device import keep_freed_memory, set_threads
    from candorlm.ledger.hardware import measured_peak_flops

    threads = set_threads(threads)
    keep_freed_memory()
    return threads, {p: measured_peak_flops(p) for p in ("fp32", "bf16")}
