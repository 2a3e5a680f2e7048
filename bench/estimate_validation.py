"""Does `candorlm estimate` predict a real run? Predicted against measured time and peak memory.

For the `tiny` and `small` presets on this CPU: the estimate for N steps (default 200) with its
measured-MFU calibration, then a real `candorlm train` of N steps in a fresh process (evaluation
and checkpoints only at the end), whose ledger.json gives the measured wall time and peak RSS.
Prints both and the error; the issue's bar is 25%. Never fails on time.

    .venv/bin/python bench/estimate_validation.py [--steps 200] [--presets tiny small] [--set train.batch_size=8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import ROOT, ensure_data


def predict(preset: str, steps: int, data: str, overrides: list[str]) -> dict:
    code = (
        "import json\n"
        "from candorlm.config import resolve\n"
        "from candorlm.device import keep_freed_memory, set_threads\n"
        "from candorlm.ledger.estimate import estimate\n"
        "from candorlm.shards import ShardSet\n"
        "set_threads(None); keep_freed_memory()\n"
        f"cfg = resolve({preset!r}, None, {overrides!r}, data={{'path': {data!r}}})\n"
        f"cfg.model.vocab_size = ShardSet({data!r}).tokenizer.vocab_size\n"
        f"print(json.dumps(estimate(cfg, steps={steps}, hardware_name='cpu').to_dict()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(preset: str, steps: int, data: str, overrides: list[str]) -> dict:
    run = ROOT / "runs" / f"bench-estimate-{preset}"
    sets = [f"--set={o}" for o in [*overrides, f"train.eval_every={steps}", f"train.save_every={steps}"]]
    subprocess.run([sys.executable, "-m", "candorlm", "train", "--data", data, "--preset", preset, "--out", str(run),
                    "--max-steps", str(steps), "--overwrite", *sets], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = json.loads((run / "ledger.json").read_text())
    train = ledger["train"]["total"]
    evaluate = ledger.get("evaluate", {}).get("total", {})
    return {"seconds": train["wall_time"]["value"], "peak_memory_bytes": train["peak_memory"]["value"],
            "eval_seconds": evaluate.get("wall_time", {}).get("value", 0.0),
            "save_seconds": train["save_time"]["value"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for both")
    args = parser.parse_args()
    data = str(ensure_data())
    print(f"{'preset':<7}{'':>10}{'predicted':>12}{'measured':>12}{'error':>8}   (bar: 25%)")
    for preset in args.presets:
        p = predict(preset, args.steps, data, args.overrides)
        m = measure(preset, args.steps, data, args.overrides)
        t_err = p["seconds"] / m["seconds"] - 1
        m_err = p["peak_memory_bytes"] / m["peak_memory_bytes"] - 1
        print(f"{preset:<7}{'time':>10}{p['seconds']:>10.1f} s{m['seconds']:>10.1f} s{t_err:>+8.1%}"
              f"   ({args.steps} steps of {p['batch_size']} x {p['seq_len']}, {p['precision']}; measured MFU "
              f"{p['mfu']:.1%}; evaluation predicted {p['eval_seconds']:.1f} s, measured {m['eval_seconds']:.1f} s)")
        parts = ", ".join(f"{k.replace('_', ' ')} {v['bytes'] / 2**20:,.0f}" for k, v in p["memory"].items())
        print(f"{'':<7}{'memory':>10}{p['peak_memory_bytes'] / 2**20:>8.0f} MiB{m['peak_memory_bytes'] / 2**20:>8.0f} MiB"
              f"{m_err:>+8.1%}   (MiB: {parts})")


if __name__ == "__main__":
    main()
