"""How right is `candorlm plan`? Predict, then train for real, at several time budgets.

For each budget: `plan` (the sweep in sweeps/peoples-daily, throughput probed now) predicts each
size's validation loss; then every size (`--all`) or the planned one trains with `--time` for that
budget, and its final validation loss (the same 16k validation tokens as the sweep's curve) is
compared with the prediction. Prints predicted vs actual and the error; never fails on time.

    .venv/bin/python bench/plan_validation.py [--budgets 1m,2m,4m] [--threads 1] [--all-at 1m]
"""

from __future__ import annotations

import argparse
import json

from _common import ROOT, ensure_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="1m,2m,4m")
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "peoples-daily"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--all-at", default="1m", help="budgets at which every size trains, not only the planned one")
    args = ap.parse_args()
    from candorlm.device import set_threads
    from candorlm.scaling.plan import plan
    from candorlm.pretrain import train

    set_threads(args.threads)
    data = ensure_data()
    rows = []
    for budget in args.budgets.split(","):
        doc = plan(budget, sweep=args.sweep, eval_tokens=16384)
        every = budget in args.all_at.split(",")
        for cand in doc["candidates"] if every else doc["candidates"][:1]:
            settings = dict(doc["train"], eval_tokens=16384, save_every=10**6, keep_checkpoints=1,
                            keep_best_checkpoint=False, eval_every=10**6)
            if args.threads:
                settings["threads"] = args.threads
            out = ROOT / "runs" / f"plan-{budget}-{cand['preset']}"
            result = train(out, data=data, preset=cand["preset"], time=budget, overwrite=True, **settings)
            ledger = json.loads((out / "ledger.json").read_text())["train"]["total"]
            actual = result.final_eval["loss"]
            rows.append({"budget": budget, "preset": cand["preset"], "planned": cand["preset"] == doc["best"],
                         "predicted_loss": cand["val_loss"], "interval": cand["val_loss_interval"],
                         "actual_loss": round(actual, 4), "error": round(cand["val_loss"] / actual - 1, 4),
                         "predicted_tokens": cand["tokens"], "actual_tokens": ledger["tokens"]["value"],
                         "time_used": ledger["time_used"]["value"], "time_budget": ledger["time_budget"]["value"],
                         "actual_bpb": round(result.final_eval["bpb"], 4), "predicted_bpb": cand["val_bpb"]})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| budget | size | planned | predicted val loss (1 sigma) | actual | error | tokens predicted / actual "
          "| time used / budget |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['budget']} | {r['preset']} | {'yes' if r['planned'] else ''} | {r['predicted_loss']:.3f} "
              f"({r['interval'][0]:.3f}-{r['interval'][1]:.3f}) | {r['actual_loss']:.3f} | {r['error']:+.1%} | "
              f"{r['predicted_tokens']:,} / {r['actual_tokens']:,} | {r['time_used']:.0f} / {r['time_budget']:.0f} s |")
    (ROOT / "runs" / "plan_validation.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
