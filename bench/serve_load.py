"""Serving load: 1, 4 and 16 concurrent streaming clients against `candorlm serve` on 127.0.0.1.

Each client sends streaming completions (64 new tokens, sampled) back to back for a fixed time;
the bench prints requests/s, completion tokens/s, time to first token and latency (p50, p99).
The peer, measured in the same run: the same 16 clients against a server whose engine decodes
one request at a time (--max-batch 1), i.e. without continuous batching.

The model is the `tiny` preset (1.8 M parameters, context 256) trained briefly by this script on
400 People's Daily articles (kept in runs/bench-serve; --run uses another run). Only loopback is ever contacted, every
loop is bounded in time, and the servers are stopped at the end. Prints figures; never fails
on time.

    .venv/bin/python bench/serve_load.py [--seconds 10] [--max-tokens 64] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import httpx

from _common import ROOT

PROMPTS = ["中国经济", "今天的新闻", "人民日报社论", "北京市", "新年到来之际", "改革开放", "科学技术", "农业生产"]


def bench_run(out: Path, steps: int) -> Path:
    """The tiny preset, trained for `steps` on 400 articles (reused when it exists)."""
    if (out / "model.safetensors").is_file():
        return out
    from candorlm.corpus import peoples_daily_documents
    from candorlm.prepare import prepare
    from candorlm.pretrain import train

    work = Path(tempfile.mkdtemp(prefix="candorlm-bench-"))
    docs = [doc.text for _, doc in zip(range(400), peoples_daily_documents())]
    (work / "pd.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    prepare([str(work / "pd.txt")], work / "data", tokenizer="bpe", vocab_size=2048, val_fraction=0.05)
    started = time.perf_counter()
    # Short windows keep this to a minute or two on 2 cores; the served context stays 256.
    train(out, data=work / "data", preset="tiny", max_steps=steps, overwrite=True, eval_every=steps,
          save_every=steps, batch_size=8, seq_len=64)
    print(f"trained {out} ({steps} steps) in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`candorlm serve` in a subprocess on 127.0.0.1, stopped on exit."""

    def __init__(self, run: Path, max_batch: int):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.audit = tempfile.NamedTemporaryFile(prefix="bench-audit-", suffix=".jsonl", delete=False).name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "candorlm", "serve", str(run), "--host", "127.0.0.1", "--port", str(self.port),
             "--max-batch", str(max_batch), "--model-name", "bench", "--audit-log", self.audit],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "CANDORLM_PROGRESS": "0"})

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in 120 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        Path(self.audit).unlink(missing_ok=True)


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int


async def one_request(client: httpx.AsyncClient, prompt: str, max_tokens: int, seed: int) -> Sample:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_k": 40,
            "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return Sample((first or end) - started, end - started, tokens)


async def load(base: str, clients: int, seconds: float, max_tokens: int) -> tuple[list[Sample], float]:
    """`clients` loops sending requests back to back until `seconds` pass; returns samples and wall time."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        await one_request(client, "预热", 4, 0)  # warm up the connection and the model
        samples: list[Sample] = []
        started = time.perf_counter()
        deadline = started + seconds

        async def loop(i: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                samples.append(await one_request(client, PROMPTS[(i + n) % len(PROMPTS)], max_tokens, i * 1000 + n))
                n += 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
        return samples, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Load time per measurement.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-serve")
    args = parser.parse_args()
    run = bench_run(args.run, args.train_steps)
    print(f"model: {run}; streaming completions of {args.max_tokens} tokens (temperature 0.8), "
          f"{args.seconds:.0f} s per row, clients and server on this machine ({os.cpu_count()} CPUs)")
    header = (f"{'clients':>7}{'max_batch':>10}{'requests':>9}{'req/s':>8}{'tokens/s':>10}"
              f"{'TTFT p50':>10}{'TTFT p99':>10}{'lat p50':>9}{'lat p99':>9}")
    print(header)
    results: dict[tuple[int, int], float] = {}
    for max_batch, levels in ((16, (1, 4, 16)), (1, (16,))):
        with Server(run, max_batch) as server:
            for clients in levels:
                samples, wall = asyncio.run(load(server.base, clients, args.seconds, args.max_tokens))
                ttft = [s.ttft * 1e3 for s in samples]
                latency = [s.latency * 1e3 for s in samples]
                tokens_s = sum(s.tokens for s in samples) / wall
                results[(clients, max_batch)] = tokens_s
                print(f"{clients:>7}{max_batch:>10}{len(samples):>9}{len(samples) / wall:>8.1f}{tokens_s:>10.0f}"
                      f"{pct(ttft, 50):>8.0f}ms{pct(ttft, 99):>8.0f}ms{pct(latency, 50):>7.0f}ms"
                      f"{pct(latency, 99):>7.0f}ms", flush=True)
    print(f"tokens/s, 16 clients vs 1 (continuous batching): {results[(16, 16)] / results[(1, 16)]:.1f}x; "
          f"16 clients with batching vs the same 16 decoded one at a time: "
          f"{results[(16, 16)] / results[(16, 1)]:.1f}x")


if __name__ == "__main__":
    main()
