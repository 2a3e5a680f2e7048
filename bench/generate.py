"""Generation throughput: new tokens/s at batch 1 and 8, with and without the KV cache.

The `tiny` preset's shape (8k vocabulary, max length 512 so that a 32-token prompt can grow by
256), greedy decoding, fp32. Prints a table; never fails on time.

    .venv/bin/python bench/generate.py [--new-tokens 256] [--prompt-tokens 32]
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from candorlm.config import resolve
from candorlm.device import set_threads
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.model import DecoderLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    args = parser.parse_args()
    set_threads(None)
    torch.manual_seed(0)
    cfg = resolve("tiny").model.model_copy(update={"vocab_size": 8192, "max_seq_len": 512})
    model = DecoderLM(cfg).eval()
    print(f"tiny shape: {model.num_params() / 1e6:.1f}M parameters, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, greedy, fp32, {torch.get_num_threads()} threads")
    print(f"{'batch':>5}{'KV cache':>10}{'new tokens/s':>14}{'ms/step':>9}")
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, greedy=True)
    for batch in (1, 8):
        prompts = torch.randint(10, cfg.vocab_size, (batch, args.prompt_tokens)).tolist()
        for cache in (True, False):
            generate_ids(model, prompts, SamplingConfig(max_new_tokens=4, greedy=True), use_cache=cache)
            start = time.perf_counter()
            out = generate_ids(model, prompts, sampling, use_cache=cache)
            seconds = time.perf_counter() - start
            new = sum(len(row) for row in out)
            print(f"{batch:>5}{'on' if cache else 'off':>10}{new / seconds:>14,.0f}{1e3 * seconds / args.new_tokens:>9.2f}")


if __name__ == "__main__":
    main()
