"""Training: one model, a sweep of sizes, and the demo that trains one and reports on it."""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from candorlm.cli.extras import needs
from candorlm.cli.options import KeyFile, options_from, reading_with

PANEL = "Training"


@options_from("candorlm.pretrain:train", skip=("model",))
def train(
    preset: Optional[str] = typer.Option(None, help="Model size preset (default: tiny, unless --config is given)."),
    arch: Optional[str] = typer.Option(None, help="Model family: decoder (GPT, next-token), encoder (BERT, "
                                       "masked LM) or seq2seq (encoder-decoder, denoising)."),
    # [train] keys as flags; None leaves the config's value (the preset's, --config's or --set's)
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps to train for."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on the validation split every N steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed (weights, data order)."),
    peak_tflops: Optional[float] = typer.Option(None, help="Device peak for MFU in TFLOP/s (default: measured)."),
    dp_epsilon: Optional[float] = typer.Option(None, help="Train with DP-SGD spending this privacy budget epsilon."),
    dp_delta: Optional[float] = typer.Option(None, help="DP delta (default: min(1e-5, 1/(10 x training windows)))."),
    dp_max_grad_norm: Optional[float] = typer.Option(None, help="DP per-window gradient clipping bound."),
    nproc: Optional[int] = typer.Option(None, help="Train in N processes on this machine (starts torchrun): "
                                        "one per GPU, or CPU processes sharing the cores."),
    strategy: Optional[str] = typer.Option(None, help="With several processes: ddp (each holds the whole model) or "
                                           "fsdp (parameters, gradients and optimizer state sharded)."),
    auto_size: bool = typer.Option(False, "--auto-size", help="With --time: train the size that `candorlm plan` "
                                   "predicts gives the lowest loss in that time on this machine."),
    key_file: KeyFile = None,
    **options: Any,
) -> None:
    """Train a language model; writes config, checkpoints, metrics.jsonl and model.safetensors to --out.

    Example: candorlm train --data data/pd --preset tiny --out runs/pd --max-steps 500

    Example: candorlm train --data data/pd --out runs/pd --time 5m   (the schedule sized to five minutes)

    Example: candorlm train --data data/pd --out runs/pd --time 10m --auto-size   (the size `candorlm plan` picks)

    Example: candorlm train --data data/pd --arch encoder --preset tiny --out runs/pd-bert

    Example: candorlm train --data data/pd --out runs/pd-dp --dp-epsilon 8   (differentially private)

    Ctrl-C saves a checkpoint and stops; --resume continues exactly where it stopped.

    Several processes (DDP or FSDP2), here or under torchrun on many nodes (README, "Many processes"):

    Example: candorlm train --data data/pd --preset small --out runs/pd --nproc 2 --strategy fsdp
    """
    if nproc is not None and nproc > 1:
        from candorlm.training.launch import launch, strip_option

        raise typer.Exit(launch(nproc, strip_option(sys.argv[1:], "--nproc")))
    from candorlm.progress import console
    from candorlm.pretrain import train as run_train

    settings = {k: v for k, v in dict(max_steps=max_steps, save_every=save_every, eval_every=eval_every, seed=seed,
                                      dp_epsilon=dp_epsilon, dp_delta=dp_delta,
                                      dp_max_grad_norm=dp_max_grad_norm).items() if v is not None}
    planned: list[str] = []
    if auto_size:
        preset, planned = _auto_size(preset, options)
    if preset is None and options["config"] is None:
        preset = "tiny"
    overrides = planned + list(options.pop("overrides") or [])  # what the user sets wins
    if peak_tflops is not None:
        overrides.append(f"ledger.peak_tflops={peak_tflops}")
    if strategy is not None:
        overrides.append(f"train.strategy={strategy}")
    with reading_with(key_file):
        result = run_train(preset=preset, overrides=overrides, model={"arch": arch} if arch else None, **options,
                           **settings)
    if result.rank != 0:  # under torchrun rank 0 speaks for all
        raise typer.Exit(130 if result.interrupted else 0)
    ev = result.final_eval
    summary = f"val loss {ev['loss']:.4f}, val bits/byte {ev['bpb']:.4f}" if ev else "no evaluation yet"
    if result.interrupted:
        console.print(f"stopped at step {result.steps}; checkpoint saved. Continue with the same command and --resume.")
        raise typer.Exit(130)
    console.print(f"trained {result.steps} steps in {result.wall_s:.0f} s ({result.tokens_per_s:,.0f} tokens/s); "
                  f"{summary}. Weights: {result.run_dir / 'model.safetensors'}")


def _auto_size(preset: str | None, options: dict[str, Any]) -> tuple[str, list[str]]:
    from candorlm.errors import CandorError
    from candorlm.progress import console
    from candorlm.scaling.plan import plan as run_plan

    if options.get("time") is None:
        raise CandorError("--auto-size chooses the size for a time budget: give --time too (e.g. --time 10m)")
    if preset is not None:
        raise CandorError("--auto-size chooses the preset: drop --preset, or drop --auto-size")
    if options.get("data") is None:
        raise CandorError("--auto-size plans with a sweep of the training data: give --data")
    doc = run_plan(options["time"], data=options["data"])
    best = doc["candidates"][0]
    console.print(f"--auto-size: {best['preset']} ({best['parameters']:,} parameters, about {best['tokens']:,} tokens "
                  f"in {options['time']}; predicted val bits/byte {best['val_bpb']}, confidence "
                  f"{doc['confidence']:.0%}, from {doc['sweep']})", highlight=False)
    return best["preset"], [f"train.{k}={v}" for k, v in doc["train"].items()]


@needs("report")
@options_from("candorlm.scaling.sweep:sweep", flags={"data": "--data"})
def sweep(key_file: KeyFile = None, **options: Any) -> None:
    """Train several model sizes with the same data, seed and token budget; fit validation loss
    against training FLOPs and parameters (a power law) and plot it, with the extrapolation marked.

    Example: candorlm sweep --data data/pd --presets nano,micro,tiny --steps 400 --out sweeps/pd
    """
    from candorlm.progress import console
    from candorlm.scaling.sweep import sweep as run_sweep

    options["presets"] = [p.strip() for item in options["presets"] for p in item.split(",") if p.strip()]
    with reading_with(key_file):
        doc = run_sweep(**options)
    for r in doc["sizes"]:
        console.print(f"{r['preset']:>6}: {r['parameters']:>10,} parameters ({r['non_embedding_parameters']:,} "
                      f"without embeddings), {r['flops']:.3g} FLOPs, val loss {r['val_loss']:.4f}, "
                      f"{r['val_bpb']:.4f} bits/byte, {r['wall_s']:.0f} s", highlight=False)
    f = doc["fit"]
    console.print(f"fit: loss = {f['loss_vs_flops']['a']:.3g} x FLOPs^-{f['loss_vs_flops']['alpha']:.4f}; "
                  f"loss = {f['loss_vs_non_embedding_parameters']['a']:.3g} x N^-"
                  f"{f['loss_vs_non_embedding_parameters']['alpha']:.4f}; total {doc['wall_s']:.0f} s", highlight=False)
    out = options["out"]
    console.print(f"wrote {out / 'sweep.json'} and {out / doc['plot']}")


@needs("explain", "privacy", "report")
@options_from("candorlm.demo:run_demo")
def demo(**options: Any) -> None:
    """Prepare People's Daily, train a small model on the CPU, print samples and bits-per-byte against
    unigram and bigram baselines, measure generalization, explain a prediction, and write the
    report card (RUN/report.html).

    Example: candorlm demo
    """
    from candorlm.demo import run_demo

    run_demo(**options)


@options_from("candorlm.scaling.plan:plan", flags={"time": "--time", "data": "--data"})
def plan(key_file: KeyFile = None, **options: Any) -> None:
    """Predict which model size gives the lowest validation loss in a time budget on this machine,
    from a scaling sweep of your data and each size's throughput measured now, and how sure that is.

    Example: candorlm plan --time 10m --data data/pd

    Example: candorlm plan --time 1h --sweep sweeps/pd

    Then: candorlm train --data data/pd --time 10m --auto-size
    """
    from rich.table import Table

    from candorlm.progress import console, stdout_console
    from candorlm.scaling.plan import plan as run_plan

    with reading_with(key_file):
        doc = run_plan(**options)
    table = Table(title=f"plan for {options['time']} of training (sweep: {doc['sweep']})")
    for col in ("preset", "parameters", "tokens/s", "tokens in the time", "val bits/byte (1 sigma)", "extrapolation"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for r in doc["candidates"]:
        bpb = f"{r['val_bpb']:.3f} ({r['val_bpb_interval'][0]:.3f}-{r['val_bpb_interval'][1]:.3f})" \
            if r["val_bpb"] is not None else "-"
        table.add_row(r["preset"], f"{r['parameters']:,}", f"{r['tokens_per_s']:,.0f}", f"{r['tokens']:,}", bpb,
                      f"x{r['beyond_measured']:.1f}" if r["beyond_measured"] > 1 else "within")
    stdout_console().print(table)
    console.print(f"best: {doc['best']} (confidence {doc['confidence']:.0%} that the runner-up is not better; "
                  f"throughput {doc['throughput']})", highlight=False)
