"""Helpers shared by the bench scripts: the demo's prepared data, peak RSS, a cold inductor cache."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "data" / "peoples-daily"


def ensure_data(vocab_size: int = 8192) -> Path:
    """The demo's People's Daily shards (8k BPE, or another vocabulary size), prepared on first use."""
    from candorlm.prepare import prepare

    data = DATA if vocab_size == 8192 else DATA.with_name(f"{DATA.name}-v{vocab_size}")
    if not (data / "meta.json").is_file():
        prepare(["builtin:peoples-daily"], data, tokenizer="bpe", vocab_size=vocab_size, overwrite=True)
    return data


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


@contextlib.contextmanager
def inductor_cache(cold: bool) -> Iterator[None]:
    """With cold=True, an empty inductor cache in a folder made here (and removed after), as on a
    user's first run; inductor reads the variable when it first writes, so enter this before
    anything compiles."""
    if not cold:
        yield
        return
    folder = tempfile.mkdtemp(prefix="candorlm-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
