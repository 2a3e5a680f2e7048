"""Greedy tokens per compiled call (model/decode.py's CHUNK): generation time per token and the
first call's compiling, for each chunk size, at bench/vs_transformers.py's generation shape
(d256, 4 layers, vocab 8192, fp32, prompt 32 + 256 greedy).

Every size is compiled first (its own graph; the first call's time, wall and CPU of this process
and its compiler subprocesses, is printed), then the sizes run interleaved, round after round,
so that load on a shared machine hits them alike. Times are process CPU time per new token
(steadier than wall time under load; the same ordering). Tokens are checked to be identical.

    .venv/bin/python bench/decode_chunks.py [--chunks 1,4,8] [--batch 1] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from candorlm.config import ModelConfig
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.model import DecoderLM
from candorlm.model import decode


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (inductor's compiler subprocesses)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="1,4,8", help="tokens per compiled call, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, max_seq_len=512)
    torch.manual_seed(0)
    model = DecoderLM(cfg).eval()
    prompts = torch.randint(10, cfg.vocab_size, (args.batch, 32), generator=torch.Generator().manual_seed(1)).tolist()
    sampling = SamplingConfig(max_new_tokens=256, greedy=True)
    chunks = [int(c) for c in args.chunks.split(",")]
    out = {}
    print(f"batch {args.batch}, prompt 32 + 256 greedy, {args.threads} thread(s)")
    for chunk in chunks:
        decode.CHUNK = chunk
        cpu, wall = cpu_seconds(), time.perf_counter()
        out[chunk] = generate_ids(model, prompts, sampling, compile=True)
        print(f"  {chunk} token(s) a call: first call (compiling + one generation) {time.perf_counter() - wall:.1f} s "
              f"wall, {cpu_seconds() - cpu:.1f} s CPU")
    times: dict[int, list[float]] = {chunk: [] for chunk in chunks}
    for _ in range(args.rounds):
        for chunk in chunks:
            decode.CHUNK = chunk
            start = time.process_time()
            generate_ids(model, prompts, sampling, compile=True)
            times[chunk].append((time.process_time() - start) / (256 * args.batch) * 1e3)
    same = all(tokens == out[chunks[0]] for tokens in out.values())
    print(f"  tokens identical across sizes: {'yes' if same else 'NO'}")
    for chunk in chunks:
        print(f"  {chunk} token(s) a call: {statistics.median(times[chunk]):.3f} ms CPU per new token")


if __name__ == "__main__":
    main()
