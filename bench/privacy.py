"""Memorization with and without DP-SGD: canaries repeated 1, 10 and 100 times in People's
Daily, the `tiny` model trained twice on the same data (plain AdamW, then DP-SGD), each audited.

Prints, for both runs: exposure per repeat count (controls = 0: never planted), membership
inference AUC, extraction rate (exact next 50 tokens after a 16-token prefix), validation loss,
the spent (epsilon, delta), and wall time. About 5 minutes on 2 quiet cores.

    .venv/bin/python bench/privacy.py [--articles 150] [--steps 400] [--seq-len 80] [--epsilon 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _common import ROOT

os.environ.setdefault("CANDORLM_PROGRESS", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=150)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seq-len", type=int, default=80)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--canaries", type=int, default=4, help="canaries per repeat count")
    parser.add_argument("--samples", type=int, default=60, help="documents per side for extraction and MIA")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-privacy"))
    args = parser.parse_args()

    from candorlm.corpus import peoples_daily_documents
    from candorlm.prepare import prepare
    from candorlm.privacy.audit import audit
    from candorlm.privacy.prepare_filters import prepare_filters
    from candorlm.pretrain import train

    out = __import__("pathlib").Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    docs = [d.text for _, d in zip(range(args.articles), peoples_daily_documents())]
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    data = out / "data"
    t0 = time.perf_counter()
    prepare([str(corpus)], data, tokenizer="bpe", vocab_size=2048, val_fraction=0.1, overwrite=True,
            filters=prepare_filters(canaries=args.canaries, canary_repeats=[1, 10, 100], canary_seed=0,
                                    val_fraction=0.1))
    print(f"prepared {args.articles} articles + canaries in {time.perf_counter() - t0:.0f} s", flush=True)
    common = dict(preset="tiny", max_steps=args.steps, seq_len=args.seq_len, batch_size=16, eval_every=args.steps,
                  save_every=args.steps, seed=0, overwrite=True)
    rows = {}
    for name, extra in (("no DP", {}), (f"DP-SGD eps={args.epsilon:g}", {"dp_epsilon": args.epsilon})):
        run = out / ("plain" if not extra else "dp")
        t0 = time.perf_counter()
        result = train(run, data=data, **common, **extra)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = audit(run, samples=args.samples, candidates=args.candidates, generations=30,
                       prefix_tokens=16, suffix_tokens=min(50, args.seq_len - 17))  # within trained positions
        rows[name] = (result, train_s, report, time.perf_counter() - t0)
        print(f"{name}: trained {train_s:.0f} s, audited {rows[name][3]:.0f} s", flush=True)

    print()
    print("| | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for repeats in ("0", "1", "10", "100"):
        label = "exposure, controls (never planted)" if repeats == "0" else f"exposure, canaries x{repeats}"
        cells = []
        for _, _, report, _ in rows.values():
            r = report["canaries"]["by_repeats"][repeats]
            cells.append(f"{r['mean_exposure']:.1f} bits (sampled rank {r['mean_exposure_sampled']:.1f}; "
                         f"extracted {r['extracted']}/{r['canaries']})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    lines = {
        "membership inference AUC": lambda rep: f"{rep['membership']['auc']:.3f}",
        "extraction rate, train / held-out": lambda rep: (f"{rep['extraction']['train']['exact_rate']:.3f} / "
                                                          f"{rep['extraction']['heldout']['exact_rate']:.3f}"),
        "PII in generations, verbatim in training": lambda rep: (f"{rep['pii_regurgitation']['in_training_data']} of "
                                                                 f"{rep['pii_regurgitation']['detected']}"),
    }
    for label, cell in lines.items():
        print(f"| {label} | " + " | ".join(cell(rep) for _, _, rep, _ in rows.values()) + " |")
    print("| validation loss | " + " | ".join(f"{res.final_eval['loss']:.3f}" for res, _, _, _ in rows.values()) + " |")
    dp_cells = []
    for _, _, rep, _ in rows.values():
        dp = rep["differential_privacy"]
        dp_cells.append("-" if dp is None else f"eps {dp['epsilon_spent']:.2f}, delta {dp['delta']:.0e}, "
                                                 f"sigma {dp['noise_multiplier']:.2f}")
    print("| privacy spent | " + " | ".join(dp_cells) + " |")
    print("| train time | " + " | ".join(f"{t:.0f} s ({res.tokens_per_s:,.0f} tokens/s)" for res, t, _, _ in rows.values())
          + " |")
    space = next(iter(rows.values()))[2]["canaries"]["candidate_space"]
    print(f"\nexposure: log2 of the candidate space ({space:.0e}: at most {__import__('math').log2(space):.1f} bits) "
          f"minus log2 of the canary's rank, from {args.candidates} sampled candidates and a skew-normal fit")
    (out / "summary.json").write_text(json.dumps({k: v[2] for k, v in rows.items()}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
