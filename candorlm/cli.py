"""The `candorlm` command line: every subcommand parses its arguments and calls the library.

Each command's docstring is its --help. Errors a user can fix print one clear message and exit
with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.logging import RichHandler
from rich.markup import escape

from candorlm.errors import CandorError
from candorlm.progress import console

app = typer.Typer(
    name="candorlm",
    help="Train transformer language models from raw text, and be honest about their limits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tokenizer_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@app.command()
def prepare(
    sources: List[str] = typer.Argument(..., help="Text files, directories, JSONL files or builtin:NAME "
                                        "(peoples-daily, reviews, python-docs)."),
    out: Path = typer.Option(..., "--out", help="Data directory to create."),
    tokenizer: str = typer.Option("bpe", help="Tokenizer kind: bpe, char or word (jieba)."),
    vocab_size: int = typer.Option(8192, help="Vocabulary size, special tokens included."),
    tokenizer_file: Optional[Path] = typer.Option(None, help="Use this tokenizer.json instead of training one."),
    text_field: str = typer.Option("text", help="JSONL field that holds the text."),
    val_fraction: float = typer.Option(0.05, help="Share of documents held out for validation."),
    workers: Optional[int] = typer.Option(None, help="Processes for word tokenization (default: all cores)."),
    overwrite: bool = typer.Option(False, help="Replace an existing data directory."),
) -> None:
    """Read a corpus, train a tokenizer and write token shards for training.

    Example: candorlm prepare builtin:peoples-daily --out data/pd --tokenizer bpe --vocab-size 8192
    """
    from candorlm.prepare import prepare as run_prepare

    meta = run_prepare(sources, out, tokenizer=tokenizer, vocab_size=vocab_size, tokenizer_file=tokenizer_file,
                       text_field=text_field, val_fraction=val_fraction, workers=workers, overwrite=overwrite)
    for path, enc in meta.encodings.items():
        if enc not in ("utf-8", "utf-8-sig"):
            console.print(f"{path}: decoded as {enc.upper()}")
    console.print(
        f"wrote {out}: {meta.documents['train']:,} training and {meta.documents['val']:,} validation documents, "
        f"{meta.tokens['train']:,} + {meta.tokens['val']:,} tokens ({meta.tokenizer_kind}, vocabulary {meta.vocab_size:,})"
    )


@tokenizer_app.command("train")
def tokenizer_train(
    sources: List[str] = typer.Argument(..., help="Corpus: files, directories, JSONL or builtin:NAME."),
    out: Path = typer.Option(..., "--out", help="Where to write tokenizer.json."),
    kind: str = typer.Option("bpe", help="bpe, char or word."),
    vocab_size: int = typer.Option(8192, help="Vocabulary size, special tokens included."),
    text_field: str = typer.Option("text", help="JSONL field that holds the text."),
) -> None:
    """Train a tokenizer on a corpus and save it as tokenizer.json.

    Example: candorlm tokenizer train builtin:peoples-daily --out tok.json --kind char --vocab-size 6000
    """
    from candorlm.prepare import train_tokenizer_file

    tok = train_tokenizer_file(sources, out, kind=kind, vocab_size=vocab_size, text_field=text_field)  # type: ignore[arg-type]
    console.print(f"wrote {out} ({tok.kind}, vocabulary {tok.vocab_size:,})")


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, help="Data directory from `candorlm prepare`."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    preset: Optional[str] = typer.Option(None, help="Model size preset: tiny, small, base, large."),
    config: Optional[Path] = typer.Option(None, help="TOML file with [model], [data], [train] sections."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps to train for."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on the validation split every N steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed (weights, data order)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its newest checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace the run in --out."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: --set train.lr=1e-3 (repeatable)."),
    peak_tflops: Optional[float] = typer.Option(None, help="Device peak for MFU in TFLOP/s (default: measured)."),
    nproc: Optional[int] = typer.Option(None, help="Train in N processes on this machine (starts torchrun): "
                                        "one per GPU, or CPU processes sharing the cores."),
    strategy: Optional[str] = typer.Option(None, help="With several processes: ddp (each holds the whole model) or "
                                           "fsdp (parameters, gradients and optimizer state sharded)."),
) -> None:
    """Train a language model; writes config, checkpoints, metrics.jsonl and model.safetensors to --out.

    Example: candorlm train --data data/pd --preset tiny --out runs/pd --max-steps 500

    Ctrl-C saves a checkpoint and stops; --resume continues exactly where it stopped.

    Several processes (DDP or FSDP2), here or under torchrun on many nodes (README, "Many processes"):

    Example: candorlm train --data data/pd --preset small --out runs/pd --nproc 2 --strategy fsdp
    """
    if nproc is not None and nproc > 1:
        from candorlm.training.launch import launch, strip_option

        raise typer.Exit(launch(nproc, strip_option(sys.argv[1:], "--nproc")))
    from candorlm.training import train as run_train

    settings = {k: v for k, v in dict(max_steps=max_steps, save_every=save_every, eval_every=eval_every,
                                      seed=seed).items() if v is not None}
    if preset is None and config is None:
        preset = "tiny"
    if peak_tflops is not None:
        overrides = [*overrides, f"ledger.peak_tflops={peak_tflops}"]
    if strategy is not None:
        overrides = [*overrides, f"train.strategy={strategy}"]
    result = run_train(out, data=data, preset=preset, config=config, overrides=overrides, resume=resume,
                       overwrite=overwrite, **settings)
    if result.rank != 0:  # under torchrun rank 0 speaks for all
        raise typer.Exit(130 if result.interrupted else 0)
    ev = result.final_eval
    summary = f"val loss {ev['loss']:.4f}, val bits/byte {ev['bpb']:.4f}" if ev else "no evaluation yet"
    if result.interrupted:
        console.print(f"stopped at step {result.steps}; checkpoint saved. Continue with the same command and --resume.")
        raise typer.Exit(130)
    console.print(f"trained {result.steps} steps in {result.wall_s:.0f} s ({result.tokens_per_s:,.0f} tokens/s); "
                  f"{summary}. Weights: {result.run_dir / 'model.safetensors'}")


@app.command()
def generate(
    run: Path = typer.Argument(..., help="Run directory."),
    prompt: List[str] = typer.Option(..., "--prompt", help="Prompt text; repeat for a batch."),
    max_new_tokens: int = typer.Option(64, help="Most tokens to generate."),
    greedy: bool = typer.Option(False, help="Always take the most likely token."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
    top_k: Optional[int] = typer.Option(None, help="Sample among the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, help="Sample among the most likely tokens holding probability p."),
    repetition_penalty: float = typer.Option(1.0, help="Above 1 discourages repeating tokens."),
    stop: List[str] = typer.Option([], help="Stop when this text appears (repeatable)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling."),
    no_cache: bool = typer.Option(False, help="Recompute the whole sequence each step (slow; for checking)."),
) -> None:
    """Continue a prompt; prints only the generated text on stdout, as it is generated.

    Example: candorlm generate runs/pd --prompt "中国经济" --max-new-tokens 50 --temperature 0.8 --top-k 40 --seed 0
    """
    from candorlm.lm import load

    lm = load(run)
    kwargs = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_k=top_k,
                  top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    if len(prompt) == 1:
        for piece in lm.stream(prompt[0], stop=stop, use_cache=not no_cache, **kwargs):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        for text in lm.generate(prompt, stop=stop, use_cache=not no_cache, **kwargs):
            sys.stdout.write(text + "\n")


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    format: str = typer.Option("hf", "--format", help="Export format: hf (Hugging Face Llama)."),
    out: Path = typer.Option(..., "--out", help="Directory to write."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Export a run to another format; `hf` loads in transformers.LlamaForCausalLM.

    Example: candorlm export runs/pd --format hf --out hf/pd
    """
    if format != "hf":
        raise CandorError(f"unknown export format '{format}'. Valid: hf.")
    from candorlm.interop.hf import export_hf

    console.print(f"wrote {export_hf(run, out, overwrite=overwrite)}")


@app.command("import")
def import_(
    source: Path = typer.Argument(..., help="Hugging Face Llama model directory."),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    format: str = typer.Option("hf", "--format", help="Source format: hf."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Import a Hugging Face Llama model directory as a candorlm run.

    Example: candorlm import hf/pd --out runs/pd-imported
    """
    if format != "hf":
        raise CandorError(f"unknown import format '{format}'. Valid: hf.")
    from candorlm.interop.hf import import_hf

    console.print(f"wrote {import_hf(source, out, overwrite=overwrite).path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory for the demo model."),
    data: Path = typer.Option(Path("data/peoples-daily"), help="Data directory (prepared if missing)."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps (default: a few minutes on 2 cores)."),
) -> None:
    """Prepare People's Daily, train a small model on the CPU, print samples and bits-per-byte against
    unigram and bigram baselines.

    Example: candorlm demo
    """
    from candorlm.demo import run_demo

    run_demo(out=out, data=data, max_steps=max_steps)


# ---- explain (issue 5) ----
@app.command("explain")
def explain_cmd(
    run: Path = typer.Argument(..., help="Run directory (a trained or imported model)."),
    prompt: str = typer.Option(..., "--prompt", help="The prompt to explain."),
    target: Optional[str] = typer.Option(None, help="Continuation to explain (default: the model's own next token)."),
    method: str = typer.Option("all", help="attention, lens, ig, patching or all; several comma-separated."),
    corrupt: Optional[str] = typer.Option(None, help="Corrupted prompt for activation patching, with as many tokens "
                                          "as --prompt."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the PNGs, explain.html and explain.json "
                                       "(default: RUN/explain)."),
    top_k: int = typer.Option(5, help="Predictions per layer and position in the logit lens."),
    ig_steps: int = typer.Option(32, help="Integrated-gradients steps (doubled until completeness is within 5%)."),
    seed: int = typer.Option(0, help="Seed for the random sequences and deletions."),
) -> None:
    """Show why the model predicts what it does: attention maps and head summaries, the logit lens,
    integrated gradients and gradient x input (with a completeness check and a deletion test
    against random deletions), and activation patching against a corrupted prompt. Writes PNGs and
    explain.html to --out and explain.json to --out and RUN/evals/.

    Example: candorlm explain runs/demo --prompt "江泽民主席在北京会见了" --corrupt "李鹏总理在北京会见了" --out explain-out
    """
    from candorlm.explain import explain

    doc = explain(run, prompt, target=target, method=method, corrupt=corrupt, out=out, top_k=top_k,
                  ig_steps=ig_steps, seed=seed)
    console.print(f"target {doc['target']!r} ({doc['target_source']}): p = {doc['p_target']:.3g}", highlight=False)
    if "attention" in doc:
        named = doc["attention"]["heads"]["heads"]
        for kind, heads in named.items():
            listed = ", ".join(f"L{h['layer']}H{h['head']} {h['score']:.2f}" for h in heads) or "none above 0.5"
            console.print(f"{kind.replace('_', '-')} heads: {listed}", highlight=False)
    if "attribution" in doc:
        ig = doc["attribution"]["integrated_gradients"]
        console.print(f"integrated gradients: completeness error {ig['completeness_error']:.2%} with "
                      f"{ig['n_steps']} steps", highlight=False)
        scores = "  ".join(f"{t}:{s:+.3f}" for t, s in zip(doc["tokens"], ig["scores"]))
        console.print(f"  {escape(scores)}", highlight=False)
    if "patching" in doc:
        console.print(f"patching metric: {escape(doc['patching']['metric'])}", highlight=False)
    out_dir = Path(out) if out is not None else Path(run) / "explain"
    console.print(f"wrote {out_dir / 'explain.html'} and {len(doc['files']) - 2} PNGs; "
                  f"{Path(run) / 'evals' / 'explain.json'}", highlight=False)


# ---- cost and compute ledger (issue 3) ----
@app.command()
def estimate(
    preset: Optional[str] = typer.Option(None, help="Model size preset: tiny, small, base, large."),
    config: Optional[Path] = typer.Option(None, help="TOML file with [model] and [train] sections."),
    params: Optional[float] = typer.Option(None, help="A parameter count instead of a config (a shape is assumed)."),
    tokens: Optional[float] = typer.Option(None, help="Training tokens (default: the config's max_steps)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps instead of --tokens."),
    compute_budget: Optional[float] = typer.Option(None, help="FLOPs to spend: prints the compute-optimal size."),
    hardware: str = typer.Option("cpu", help="cpu (this machine, measured), a100, h100 or h200."),
    precision: str = typer.Option("auto", help="auto, bf16 or fp32."),
    mfu: Optional[float] = typer.Option(None, help="Assumed model FLOPs utilization, 0-1 (cpu: measured if unset)."),
    price_per_hour: Optional[float] = typer.Option(None, help="Price of one device-hour."),
    currency: str = typer.Option("USD", help="Currency of --price-per-hour."),
    grid: Optional[float] = typer.Option(None, help="Grid carbon intensity, kg CO2e per kWh."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: --set train.batch_size=8."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predict a training run's FLOPs, time, memory (and whether it fits), energy, money and CO2;
    or, with --compute-budget, the compute-optimal model size and token count (Chinchilla).

    Example: candorlm estimate --preset small --tokens 50e6 --hardware cpu

    Example: candorlm estimate --compute-budget 1e21 --hardware h100
    """
    import json

    from candorlm.ledger.estimate import estimate as run_estimate
    from candorlm.ledger.estimate import estimate_compute_budget
    from candorlm.ledger.show import print_budget, print_estimate

    if compute_budget is not None:
        result = estimate_compute_budget(compute_budget, hardware, mfu=mfu, price_per_hour=price_per_hour,
                                         currency=currency, grid_kg_co2_per_kwh=grid)
        if json_out:
            print(json.dumps(result))
        else:
            print_budget(result)
        return
    from candorlm.config import resolve

    if params is not None and (preset or config):
        raise CandorError("give either --params or --preset/--config, not both")
    cfg = None if params is not None else resolve(preset or (None if config else "tiny"), config, overrides)
    est = run_estimate(cfg, params=params, tokens=int(tokens) if tokens is not None else None, steps=steps,
                       hardware_name=hardware, precision=precision, mfu=mfu, price_per_hour=price_per_hour,
                       currency=currency, grid_kg_co2_per_kwh=grid)
    if json_out:
        print(json.dumps(est.to_dict()))
    else:
        print_estimate(est)


@app.command("ledger")
def ledger_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show each figure's full method."),
    json_out: bool = typer.Option(False, "--json", help="Print ledger.json as it is."),
) -> None:
    """Print what a run cost (ledger.json) as a table: time, tokens/s, FLOPs, MFU, memory, energy, money, CO2.

    Example: candorlm ledger runs/pd --verbose
    """
    import json

    from candorlm.ledger.book import ledger, ledger_table

    data = ledger(run)
    if json_out:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console

        Console().print(ledger_table(data, verbose=verbose))


def _setup_logging() -> None:
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("jieba").setLevel(logging.WARNING)


def main() -> None:
    _setup_logging()
    try:
        app()
    except CandorError as exc:
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
