"""What checking a run against its SHA256SUMS costs when it loads, for each preset.

For every preset: a run directory with random weights (fp32, as training writes them), an 8k
BPE-sized vocabulary and a manifest; then `load_run(...).build_model()` timed with verify=True
and verify=False (the median of --repeat loads each, alternating, the files in the page cache as
they are right after training), and the hashing alone (which load_run overlaps with loading).

    python bench/load_verify.py                       # all presets
    python bench/load_verify.py --presets tiny,small --repeat 11
    python bench/load_verify.py --encrypted           # the same runs encrypted (`candorlm encrypt`):
                                                      # checked = the keyed manifest, CANDORLM-SEALED.json

Prints one row per preset: parameters, weights size, load time unchecked, load time checked,
the difference as a share of the load. Timings depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from candorlm.checkpoint.run import load_run  # noqa: E402
from candorlm.checkpoint.weights import save_weights  # noqa: E402
from candorlm.config import preset_names, resolve  # noqa: E402
from candorlm.io.files import atomic_write_text, sha256_file  # noqa: E402
from candorlm.io.manifest import write_manifest  # noqa: E402
from candorlm.io.sealed import Key  # noqa: E402
from candorlm.privacy.crypto import encrypt_path  # noqa: E402
from candorlm.model import build_model  # noqa: E402
from candorlm.rundir import RunDir  # noqa: E402
from candorlm.tokenizer import train_tokenizer  # noqa: E402

VOCAB = 8192


def make_run(path: Path, preset: str, tokenizer) -> tuple[int, int]:
    cfg = resolve(preset, None, [], model={"vocab_size": tokenizer.vocab_size})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    run = RunDir(path)
    path.mkdir(parents=True)
    atomic_write_text(run.config, cfg.to_toml())
    tokenizer.save(run.tokenizer)
    save_weights(model, run.weights)
    write_manifest(path)
    return sum(p.numel() for p in model.parameters()), run.weights.stat().st_size


def load_time(path: Path, verify: bool, key: Key | None = None) -> float:
    t0 = time.perf_counter()
    load_run(path, verify=verify, key=key).build_model("cpu")
    return time.perf_counter() - t0


def median_loads(path: Path, repeat: int, key: Key | None = None) -> tuple[float, float]:
    """Median load time unchecked and checked, alternating so that drift on a busy machine hits both."""
    plain, checked = [], []
    for _ in range(repeat):
        plain.append(load_time(path, False, key))
        checked.append(load_time(path, True, key))
    return statistics.median(plain), statistics.median(checked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(preset_names()))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--encrypted", action="store_true", help="time encrypted copies of the runs")
    args = parser.parse_args()
    key = Key(raw=os.urandom(32)) if args.encrypted else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    text = [f"今天的新闻 {i} the quick brown fox {i * 7} 中国经济发展" for i in range(2000)]
    tokenizer = train_tokenizer(text, "bpe", VOCAB)
    print(f"{'preset':<8} {'params':>12} {'weights':>10} {'unchecked':>10} {'checked':>10} {'sha256':>8} {'cost':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            path = Path(tmp) / preset
            params, size = make_run(path, preset, tokenizer)
            if key is not None:
                encrypt_path(path, Path(tmp) / f"{preset}.enc", key)
                shutil.rmtree(path)
                path = Path(tmp) / f"{preset}.enc"
            load_time(path, True, key)  # warm the page cache and the imports
            plain, checked = median_loads(path, args.repeat, key)
            t0 = time.perf_counter()
            for name in ("config.toml", "tokenizer.json", "model.safetensors"):
                sha256_file(path / name)
            hashing = time.perf_counter() - t0
            print(f"{preset:<8} {params:>12,} {size / 2**20:>8.1f} MB {plain:>9.3f}s {checked:>9.3f}s "
                  f"{hashing:>7.3f}s {100 * (checked - plain) / plain:>6.1f}%", flush=True)


if __name__ == "__main__":
    main()
