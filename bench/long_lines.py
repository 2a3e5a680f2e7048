"""Peak memory of `candorlm prepare` on one very long line against a normal file of the same size.

The corpus reader cuts over-long lines while streaming (candorlm/corpus.py, MAX_LINE_CHARS), so
a file that is one 20 MB line must cost about what a 20 MB file of ordinary paragraphs costs.
Each `prepare` runs in its own process (`python -m candorlm prepare ...`) and its peak resident
memory is read with getrusage(RUSAGE_CHILDREN) in a fresh wrapper process; the two files are
alternated `--repeat` times and the largest peak of each is reported, with their ratio.

    .venv/bin/python bench/long_lines.py [--mb 20] [--tokenizer bpe] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _common

_MEASURE = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _corpus_text(mb: int) -> list[str]:
    """Real paragraphs (People's Daily, then Python's docs), repeated until `mb` megabytes."""
    from candorlm.corpus import peoples_daily_documents, python_docs_documents

    paragraphs: list[str] = []
    for doc in peoples_daily_documents():
        paragraphs.extend(p for p in doc.text.split("\n") if p.strip())
        if len(paragraphs) > 20_000:
            break
    for doc in python_docs_documents():
        paragraphs.extend(p.replace("\n", " ") for p in doc.text.split("\n\n") if p.strip())
    out, size, i = [], 0, 0
    while size < mb * 1_000_000:
        p = paragraphs[i % len(paragraphs)]
        out.append(p)
        size += len(p.encode("utf-8")) + 2
        i += 1
    return out


def _peak_mib(args: list[str], env: dict[str, str]) -> float:
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], env=env, capture_output=True, text=True)
    rc, kib = done.stdout.split()[-2:]
    if rc != "0":
        raise SystemExit(f"prepare failed (rc {rc}): {done.stderr[-2000:]}")
    return int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--tokenizer", default="bpe")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    env = {**os.environ, "CANDORLM_PROGRESS": "0", "PYTHONPATH": str(_common.ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paragraphs = _corpus_text(args.mb)
        normal, single = root / "normal.txt", root / "single.txt"
        normal.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
        # One line of all but the last 100 paragraphs, then those 100 as they are: before the cut
        # existed, a file of one line alone was one document and had no validation split.
        single.write_text(" ".join(paragraphs[:-100]) + "\n\n" + "\n\n".join(paragraphs[-100:]) + "\n",
                          encoding="utf-8")
        peaks: dict[str, float] = {"normal": 0.0, "single": 0.0}
        for _ in range(args.repeat):
            for name, path in (("normal", normal), ("single", single)):
                out = root / f"data-{name}"
                cmd = [sys.executable, "-m", "candorlm", "prepare", str(path), "--out", str(out),
                       "--tokenizer", args.tokenizer, "--overwrite"]
                peaks[name] = max(peaks[name], _peak_mib(cmd, env))
        print(f"files: normal {normal.stat().st_size / 1e6:.1f} MB ({len(paragraphs):,} paragraphs), "
              f"one line of {single.stat().st_size / 1e6 - 0.1:.1f} MB + 100 paragraphs; tokenizer {args.tokenizer}")
        print(f"peak RSS of candorlm prepare: normal {peaks['normal']:.0f} MiB, one long line {peaks['single']:.0f} MiB, "
              f"ratio {peaks['single'] / peaks['normal']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
