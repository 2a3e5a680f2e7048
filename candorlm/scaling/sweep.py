"""`candorlm sweep`: several model sizes, the same data, seed and token budget; loss against
compute and size.

Every size trains for the same number of steps on the same batches (same seed, same data order),
so the sizes differ only in shape. Each gets its own run directory (config, metrics.jsonl,
ledger.json) under the sweep directory; sweep.json holds per size: parameters (all, and without
the embeddings, Kaplan's convention), training tokens and FLOPs (from ledger.json), wall time,
and validation loss and bits-per-byte on the whole validation split. Two power laws are fitted
to the final points (loss vs training FLOPs, loss vs non-embedding parameters) and sweep.png
draws them with their extrapolation to 100x the largest point, drawn dashed and labelled as an
extrapolation.

The default budget (400 steps of 8 x 256 tokens, sizes nano, micro, tiny) fits in a few minutes
per size on 2 CPU cores; it is a scaling *view*, far below the budgets of published scaling laws.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from candorlm.config import preset_names
from candorlm.errors import CandorError
from candorlm.evaluate import evaluate_bpb
from candorlm.io.files import read_json, write_json
from candorlm.io.outputs import claim_dir, write_marker
from candorlm.forecast import say_duration
from candorlm.lm import LanguageModel
from candorlm.progress import console
from candorlm.scaling.fit import fit_power_law
from candorlm.shards import ShardSet

DEFAULT_PRESETS = ("nano", "micro", "tiny")
DEFAULT_STEPS = 400
DEFAULT_BATCH = 8


def _val_curve(run: Path) -> list[dict[str, float]]:
    points = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            points.append({"step": record["step"], "val_loss": record["val_loss"], "val_bpb": record.get("val_bpb")})
    return points


CALIBRATION_STEPS = 1  # per size, after the calibration's two warm-ups: a forecast, not a benchmark


def _estimates(presets: Sequence[str], data: str | Path, shards: ShardSet, settings: dict[str, Any],
               overrides: Sequence[str]) -> list[float] | None:
    """Each size's time from the ledger's estimate (real steps timed on this CPU), or None when
    it cannot be made; the sweep itself never depends on it."""
    from candorlm.config import resolve
    from candorlm.ledger.estimate import estimate

    train_keys = dict(settings)
    try:
        return [estimate(resolve(name, overrides=list(overrides), train=train_keys, data={"path": str(data)},
                                 model={"vocab_size": shards.meta.vocab_size}),
                         steps=settings["max_steps"], hardware_name="cpu",
                         calibration_steps=CALIBRATION_STEPS).seconds for name in presets]
    except (CandorError, ValueError, RuntimeError):
        return None


def sweep(data: str | Path, out: str | Path, presets: Sequence[str] = DEFAULT_PRESETS, *, steps: int = DEFAULT_STEPS,
          batch_size: int = DEFAULT_BATCH, seq_len: int | None = 256, seed: int = 1337, threads: int | None = None,
          overrides: Sequence[str] = (), overwrite: bool = False) -> dict[str, Any]:
    """Train each preset for `steps` steps on `data`, evaluate, fit, plot; returns sweep.json's content.

    Args:
        data: Data directory from `candorlm prepare` (the same for every size).
        out: Sweep directory: one run per size, sweep.json, sweep.png.
        presets: Size presets, at least two.
        steps: Optimizer steps per size (the same token budget for each).
        batch_size: Sequences per step.
        seq_len: Tokens per sequence (None: each preset's own).
        seed: Random seed (weights, data order), the same for every size.
        threads: CPU threads (default: physical cores).
        overrides: Config values for every size, as section.key=value.
        overwrite: Replace a sweep in `out`.
    """
    from candorlm.pretrain import train

    out = Path(out)
    presets = list(presets)
    unknown = [p for p in presets if p not in preset_names()]
    if unknown:
        raise CandorError(f"--presets: unknown preset(s) {', '.join(unknown)}. Valid: {', '.join(preset_names())}.")
    if len(presets) < 2:
        raise CandorError("--presets: a sweep needs at least two sizes to fit a power law")
    # Each size's run is replaced by `train` itself (only once the new one is saved); the folder stays.
    claim_dir(out, "sweep", overwrite=overwrite, inputs=[data])  # no legacy rule: any folder may hold a sweep.json
    shards = ShardSet(data)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "sweep", "candorlm sweep")
    t0 = time.perf_counter()
    settings = {"max_steps": steps, "batch_size": batch_size, "seed": seed, "eval_every": max(1, steps // 6),
                "eval_tokens": 16384, "save_every": steps, "keep_checkpoints": 1, "keep_best_checkpoint": False,
                "warmup_steps": min(50, max(1, steps // 10))}
    if seq_len:
        settings["seq_len"] = seq_len
    if threads:
        settings["threads"] = threads
    planned = _estimates(presets, data, shards, settings, overrides)
    if planned:
        console.print(f"estimated time: about {say_duration(sum(planned))} (the ledger's estimate for each size: its "
                      f"FLOPs at the pace of {CALIBRATION_STEPS} real training step(s) timed now, evaluation included)",
                      highlight=False)
    rows = []
    for i, name in enumerate(presets):
        if planned and i:
            done = sum(r["wall_s"] for r in rows)
            left = sum(planned[i:]) * done / max(sum(planned[:i]), 1e-9)
            console.print(f"about {say_duration(left)} left (the estimate scaled by the {done:.0f} s the sizes so far "
                          f"took against the {sum(planned[:i]):.0f} s estimated)", highlight=False)
        console.print(f"[bold]{i + 1}/{len(presets)}[/bold] training {name} for {steps} steps")
        run = out / name
        result = train(run, data=data, preset=name, overrides=list(overrides), overwrite=True, **settings)
        if result.interrupted:
            kept = max(out.glob(f"{name}.replaced*"), key=lambda p: p.stat().st_mtime, default=None)
            also = f" (the previous {name} run is kept as {kept}: delete it if you do not need it)" if kept else ""
            raise CandorError(f"the sweep was interrupted while training {name}; run it again with --overwrite{also}")
        lm = LanguageModel.load(run, device="cpu")
        final = evaluate_bpb(lm.model, shards.windows("val", lm.config.seq_len), lm.tokenizer.token_byte_lengths())
        ledger = read_json(run / "ledger.json")["train"]["total"]
        rows.append({
            "preset": name, "run": str(run),
            "model": {k: lm.config.model.model_dump()[k] for k in ("d_model", "n_layers", "n_heads", "vocab_size")},
            "parameters": lm.model.num_params(), "non_embedding_parameters": lm.model.num_params(non_embedding=True),
            "tokens": ledger["tokens"]["value"], "flops": ledger["flops"]["value"],
            "wall_s": round(ledger["wall_time"]["value"], 1), "tokens_per_s": ledger["tokens_per_s"]["value"],
            "val_loss": round(final["loss"], 4), "val_bpb": round(final["bpb"], 4), "val_tokens": final["tokens"],
            "curve": _val_curve(run),
        })
        console.print(f"   {rows[-1]['parameters']:,} parameters, {rows[-1]['flops']:.3g} FLOPs, "
                      f"val loss {rows[-1]['val_loss']:.4f} ({rows[-1]['wall_s']:.0f} s)")
    rows.sort(key=lambda r: r["flops"])
    by_flops = fit_power_law([r["flops"] for r in rows], [r["val_loss"] for r in rows])
    by_params = fit_power_law([r["non_embedding_parameters"] for r in rows], [r["val_loss"] for r in rows])
    doc = {
        "data": str(data), "presets": presets, "steps": steps, "batch_size": batch_size,
        "seq_len": seq_len, "seed": seed, "sizes": rows,
        "fit": {"loss_vs_flops": by_flops.to_dict(), "loss_vs_non_embedding_parameters": by_params.to_dict(),
                "form": "L = a * x^(-alpha), least squares on log L vs log x, final points only"},
        "extrapolation": {
            "note": "an extrapolation of the fitted line, not a measurement",
            "flops": [{"flops": rows[-1]["flops"] * k, "val_loss": round(float(by_flops(rows[-1]["flops"] * k)), 4)}
                      for k in (10, 100)],
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        "command": f"candorlm sweep --data {data} --presets {','.join(presets)} --steps {steps} --out {out}",
    }
    from candorlm.scaling.plot import sweep_png

    doc["plot"] = sweep_png(doc, out / "sweep.png").name
    write_json(out / "sweep.json", doc)
    return doc
