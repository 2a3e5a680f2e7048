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
