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
    scrub: bool = typer.Option(False, help="Replace personal data with typed placeholders on the way in "
                               "(see `candorlm scrub`); report in DATA_DIR/scrub_report.json."),
    canaries: int = typer.Option(0, help="Plant N random secrets per --repeats count, for `candorlm audit`."),
    repeats: str = typer.Option("10", help="How many copies of each canary: a count or a list, e.g. 1,10,100."),
    canary_format: Optional[str] = typer.Option(None, help="Canary text, # for each random digit "
                                                "(default: 我的银行卡号是####-####)."),
) -> None:
    """Read a corpus, train a tokenizer and write token shards for training.

    Example: candorlm prepare builtin:peoples-daily --out data/pd --tokenizer bpe --vocab-size 8192

    Example: candorlm prepare notes/ --out data/notes --scrub --canaries 4 --repeats 1,10,100
    """
    from candorlm.prepare import prepare as run_prepare

    meta = run_prepare(sources, out, tokenizer=tokenizer, vocab_size=vocab_size, tokenizer_file=tokenizer_file,
                       text_field=text_field, val_fraction=val_fraction, workers=workers, overwrite=overwrite,
                       scrub=scrub, canaries=canaries, canary_repeats=repeats, canary_format=canary_format)
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
    arch: Optional[str] = typer.Option(None, help="Model family: decoder (GPT, next-token), encoder (BERT, "
                                       "masked LM) or seq2seq (encoder-decoder, denoising)."),
    config: Optional[Path] = typer.Option(None, help="TOML file with [model], [data], [train] sections."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps to train for."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on the validation split every N steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed (weights, data order)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its newest checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace the run in --out."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: --set train.lr=1e-3 (repeatable)."),
    peak_tflops: Optional[float] = typer.Option(None, help="Device peak for MFU in TFLOP/s (default: measured)."),
    dp_epsilon: Optional[float] = typer.Option(None, help="Train with DP-SGD spending this privacy budget epsilon."),
    dp_delta: Optional[float] = typer.Option(None, help="DP delta (default: min(1e-5, 1/(10 x training windows)))."),
    dp_max_grad_norm: Optional[float] = typer.Option(None, help="DP per-window gradient clipping bound (default 1.0)."),
    key_file: Optional[Path] = typer.Option(None, help="Key to read encrypted data with (or set CANDORLM_KEY)."),
    nproc: Optional[int] = typer.Option(None, help="Train in N processes on this machine (starts torchrun): "
                                        "one per GPU, or CPU processes sharing the cores."),
    strategy: Optional[str] = typer.Option(None, help="With several processes: ddp (each holds the whole model) or "
                                           "fsdp (parameters, gradients and optimizer state sharded)."),
) -> None:
    """Train a language model; writes config, checkpoints, metrics.jsonl and model.safetensors to --out.

    Example: candorlm train --data data/pd --preset tiny --out runs/pd --max-steps 500

    Example: candorlm train --data data/pd --arch encoder --preset tiny --out runs/pd-bert

    Example: candorlm train --data data/pd --out runs/pd-dp --dp-epsilon 8   (differentially private)

    Ctrl-C saves a checkpoint and stops; --resume continues exactly where it stopped.

    Several processes (DDP or FSDP2), here or under torchrun on many nodes (README, "Many processes"):

    Example: candorlm train --data data/pd --preset small --out runs/pd --nproc 2 --strategy fsdp
    """
    if nproc is not None and nproc > 1:
        from candorlm.training.launch import launch, strip_option

        raise typer.Exit(launch(nproc, strip_option(sys.argv[1:], "--nproc")))
    from candorlm.io.sealed import resolve_key, use_key
    from candorlm.training import train as run_train

    settings = {k: v for k, v in dict(max_steps=max_steps, save_every=save_every, eval_every=eval_every,
                                      seed=seed, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
                                      dp_max_grad_norm=dp_max_grad_norm).items() if v is not None}
    if preset is None and config is None:
        preset = "tiny"
    if peak_tflops is not None:
        overrides = [*overrides, f"ledger.peak_tflops={peak_tflops}"]
    if strategy is not None:
        overrides = [*overrides, f"train.strategy={strategy}"]
    with use_key(resolve_key(key_file)):
        result = run_train(out, data=data, preset=preset, config=config, overrides=overrides, resume=resume,
                           overwrite=overwrite, model={"arch": arch} if arch else None, **settings)
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
    key_file: Optional[Path] = typer.Option(None, help="Key of an encrypted run (or set CANDORLM_KEY)."),
) -> None:
    """Continue a prompt; prints only the generated text on stdout, as it is generated, and adds
    the call's time, tokens/s, FLOPs, energy and cost to RUN/ledger.json (kind `generate`).

    Example: candorlm generate runs/pd --prompt "中国经济" --max-new-tokens 50 --temperature 0.8 --top-k 40 --seed 0
    """
    from candorlm.lm import load
    from candorlm.io.sealed import resolve_key

    from candorlm.ledger.usage import metered_generation

    lm = load(run, key=resolve_key(key_file))
    kwargs = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_k=top_k,
                  top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    with metered_generation(lm, run):  # a `generate` session in RUN/ledger.json
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
    unigram and bigram baselines, measure generalization, explain a prediction, and write the
    report card (RUN/report.html).

    Example: candorlm demo
    """
    from candorlm.demo import run_demo

    run_demo(out=out, data=data, max_steps=max_steps)


# ---- explain (issue 5) ----
@app.command("explain")
def explain_cmd(
    run: Path = typer.Argument(..., help="Run directory (a trained or imported model)."),
    prompt: str = typer.Option(..., "--prompt", help="The prompt to explain."),
    target: Optional[str] = typer.Option(None, help="Continuation to explain (default: the model's own next token); "
                                         "an encoder's tokens at the prompt's <|mask|>; an encoder-decoder's output."),
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

    The run's model.arch picks what is explained: a decoder's continuation of the prompt; an
    encoder's prediction at the prompt's <|mask|> positions (one <|mask|> is appended per target
    token when the prompt has none); an encoder-decoder's output (the target) for the prompt as
    its source, with encoder, decoder and cross-attention maps.

    Example: candorlm explain runs/mlm --prompt "人民日<|mask|>记者" --out explain-mlm

    Example: candorlm explain runs/demo --prompt "江泽民主席在北京会见了" --corrupt "李鹏总理在北京会见了" --out explain-out
    """
    from candorlm.explain import explain

    doc = explain(run, prompt, target=target, method=method, corrupt=corrupt, out=out, top_k=top_k,
                  ig_steps=ig_steps, seed=seed)
    console.print(f"target {doc['target']!r} ({doc['target_source']}): p = {doc['p_target']:.3g}", highlight=False)
    for attention in doc.get("attention", {}).get("maps", []):
        where = "" if attention["name"] == "self" else f"{attention['name']} "
        for kind, heads in (attention["heads"] or {}).get("heads", {}).items():
            listed = ", ".join(f"L{h['layer']}H{h['head']} {h['score']:.2f}" for h in heads) or "none above 0.5"
            console.print(f"{where}{kind.replace('_', '-')} heads: {listed}", highlight=False)
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


# ---- serving (issue 8) ----
keys_app = typer.Typer(help="Manage API keys for `candorlm serve`.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("add")
def keys_add(
    name: str = typer.Argument(..., help="A name for the key's holder (letters, digits, '-', '_', '.')."),
    keys: Path = typer.Option(..., "--keys", help="Keys file (created if missing)."),
    scopes: str = typer.Option("generate", help="Comma-separated: generate, explain, admin."),
    rate_limit: int = typer.Option(60, help="Requests per minute (0: no limit)."),
    token_budget: int = typer.Option(0, help="Prompt plus completion tokens per hour (0: no limit)."),
) -> None:
    """Create an API key; prints it once (only a salted hash is stored).

    Example: candorlm keys add alice --scopes generate,explain --keys keys.json
    """
    from candorlm.serve.auth import add_key

    key = add_key(keys, name, scopes, requests_per_minute=rate_limit or None, tokens_per_hour=token_budget or None)
    sys.stdout.write(key + "\n")
    console.print(f"key '{name}' added to {keys}; it is shown only now, so keep it somewhere safe")


@keys_app.command("list")
def keys_list(keys: Path = typer.Option(..., "--keys", help="Keys file.")) -> None:
    """List keys: name, scopes, limits, creation time (never the keys).

    Example: candorlm keys list --keys keys.json
    """
    from candorlm.serve.auth import list_keys

    for r in list_keys(keys):
        rate = f"{r.requests_per_minute}/min" if r.requests_per_minute else "no rate limit"
        budget = f"{r.tokens_per_hour:,} tokens/h" if r.tokens_per_hour else "no token budget"
        sys.stdout.write(f"{r.name}\t{','.join(r.scopes)}\t{rate}\t{budget}\t{r.created}\n")


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(..., help="Name of the key to revoke."),
    keys: Path = typer.Option(..., "--keys", help="Keys file."),
) -> None:
    """Revoke a key; a running server refuses it from its next request.

    Example: candorlm keys revoke alice --keys keys.json
    """
    from candorlm.serve.auth import revoke_key

    revoke_key(keys, name)
    console.print(f"revoked key '{name}'")


@app.command()
def serve(
    run: Path = typer.Argument(..., help="Run directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; beyond loopback it needs --keys."),
    port: int = typer.Option(8000, help="Port."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Keys file from `candorlm keys add`: keys required."),
    insecure_no_auth: bool = typer.Option(False, help="Serve beyond loopback without keys (anyone may call)."),
    audit_log: Optional[Path] = typer.Option(None, help="Audit log (JSONL); default RUN/audit.jsonl."),
    audit_text: bool = typer.Option(False, help="Also log prompt and completion text (off: counts only)."),
    max_batch: int = typer.Option(16, help="Requests decoded together (slots in the KV cache)."),
    max_tokens: int = typer.Option(1024, help="Most new tokens one request may ask for."),
    max_body: int = typer.Option(1 << 20, help="Largest request body in bytes."),
    model_name: Optional[str] = typer.Option(None, help="Model id clients use (default: the run's folder name)."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    key_file: Optional[Path] = typer.Option(None, help="Key to read an encrypted run with (or set CANDORLM_KEY)."),
) -> None:
    """Serve a run: OpenAI-compatible API (completions, chat, streaming), /v1/explain, and a chat page at /.

    Example: candorlm serve runs/pd --port 8000 --keys keys.json
    """
    from candorlm.io.sealed import resolve_key
    from candorlm.serve.server import serve as run_server

    run_server(run, host=host, port=port, keys=keys, insecure_no_auth=insecure_no_auth, audit_log=audit_log,
               audit_text=audit_text, max_batch=max_batch, model_name=model_name, device=device,
               max_tokens=max_tokens, max_body_bytes=max_body, key=resolve_key(key_file))


# ---- tasks: fine-tuning, task evaluation, chat (issue 4) ----


@app.command()
def finetune(
    run: Optional[Path] = typer.Argument(None, help="Pretrained run to start from (omit to start from scratch)."),
    task: str = typer.Option(..., help="sentiment, translate, qa or chat."),
    data: str = typer.Option(..., help="Task data: a JSONL/TSV file, or builtin:reviews | builtin:pinyin | "
                             "builtin:qa | builtin:chat."),
    out: Path = typer.Option(..., "--out", help="New run directory to write."),
    scratch: bool = typer.Option(False, help="Use RUN's config and tokenizer but not its weights (a from-scratch "
                                 "control with the same shape)."),
    preset: str = typer.Option("tiny", help="Model size when there is no RUN."),
    arch: Optional[str] = typer.Option(None, help="Model family when there is no RUN: decoder, encoder or seq2seq."),
    epochs: float = typer.Option(3.0, help="Passes over the training split."),
    batch_size: int = typer.Option(32, help="Examples per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 5e-4 from a run, 1e-3 from scratch)."),
    seed: int = typer.Option(1337, help="Random seed (head init, data order)."),
    precision: str = typer.Option("auto", help="auto (bf16 where the hardware has it), fp32 or bf16."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: physical cores)."),
    labels: Optional[str] = typer.Option(None, help="sentiment: the label set, comma-separated (default: the labels "
                                         "found in the data)."),
    tokenizer: Optional[str] = typer.Option(None, help="Without RUN: tokenizer kind to train on the task data "
                                            "(bpe or char; translate: the target side)."),
    vocab_size: Optional[int] = typer.Option(None, help="Without RUN: vocabulary size of that tokenizer."),
    beam_size: int = typer.Option(4, help="translate: beam size of the test evaluation."),
    overwrite: bool = typer.Option(False, help="Replace the run in --out."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: --set model.dropout=0.1."),
) -> None:
    """Fine-tune a pretrained run (or a fresh model) for a task; writes a new run directory with
    task.json and evals/<task>.json (test metrics next to baselines).

    Example: candorlm finetune runs/pd --task sentiment --data builtin:reviews --out runs/pd-sentiment

    Example: candorlm finetune --task translate --data builtin:pinyin --arch seq2seq --out runs/pinyin
    """
    from candorlm.tasks import finetune as run_finetune

    options = {k: v for k, v in dict(labels=labels.split(",") if labels else None, tokenizer=tokenizer,
                                     vocab_size=vocab_size).items() if v is not None}
    if task == "translate":
        options["beam_size"] = beam_size
    result = run_finetune(run, task=task, data=data, out=out, scratch=scratch, preset=preset, arch=arch, epochs=epochs,
                          batch_size=batch_size, lr=lr, seed=seed, precision=precision, threads=threads, overrides=overrides, overwrite=overwrite, **options)
    console.print(f"wrote {out}; test results in {out / 'evals' / (task + '.json')}")
    _print_task_result(result)


@app.command("eval")
def eval_(
    targets: List[str] = typer.Argument(..., help="Run directory; with --domains, then the held-out sets: builtin:NAME, "
                                        "files or directories (none: the built-in corpora the run did not train on)."),
    task: Optional[str] = typer.Option(None, help="sentiment, translate, qa or chat (a fine-tuned run)."),
    domains: bool = typer.Option(False, "--domains", help="Bits-per-byte in-domain and on other domains, the "
                                 "generalization gap, robustness probes; writes RUN/evals/domains.json."),
    data: Optional[str] = typer.Option(None, help="--task: task data (default: the data the run was fine-tuned on). "
                                       "--domains: the run's data directory, if it has moved."),
    compare: List[Path] = typer.Option([], help="sentiment: another fine-tuned run to score on the same split "
                                       "(repeatable)."),
    beam_size: int = typer.Option(4, help="translate: beam size (1 = greedy)."),
    length_penalty: float = typer.Option(1.0, help="translate: hypotheses are ranked by log-prob / length^this."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N test examples."),
    max_docs: int = typer.Option(200, help="--domains: documents per set (a seeded sample; 0: all)."),
    max_chars: int = typer.Option(2000, help="--domains: characters per document (the first ones; 0: all)."),
    probes: bool = typer.Option(True, help="--domains: also the robustness probes (traditional characters, "
                                "punctuation width, character noise, longer contexts)."),
    seed: int = typer.Option(0, help="--domains: seed of the samples, the noise and the bootstrap."),
) -> None:
    """Score a fine-tuned run on its task's test split, next to baselines (RUN/evals/<task>.json); or,
    with --domains, measure how a language model generalizes (RUN/evals/domains.json).

    Example: candorlm eval runs/pd-sentiment --task sentiment --compare runs/bert-sentiment

    Example: candorlm eval runs/pd --domains builtin:reviews builtin:python-docs notes.txt
    """
    run = Path(targets[0])
    if domains == (task is not None):
        raise CandorError("give either --task NAME (a fine-tuned run) or --domains (a language model), not "
                          + ("both" if domains else "neither"))
    if domains:
        from candorlm.generalization import evaluate_domains, print_domains

        result = evaluate_domains(run, targets[1:], data=data, max_docs=max_docs, max_chars=max_chars,
                                  probes=probes, context=probes, seed=seed)
        print_domains(result)
        console.print(f"wrote {run / 'evals' / 'domains.json'}")
        return
    if len(targets) > 1:
        raise CandorError(f"--task takes one run directory; got {len(targets)} arguments ({' '.join(targets)})")
    from candorlm.tasks import evaluate_task

    result = evaluate_task(run, task, data=data, compare=compare, beam_size=beam_size, length_penalty=length_penalty,
                           limit=limit)
    console.print(f"wrote {run / 'evals' / (task + '.json')}")
    _print_task_result(result)


def _print_task_result(result: dict) -> None:
    import json

    shown = {k: v for k, v in result.items() if k not in ("examples", "command")}
    sys.stdout.write(json.dumps(shown, indent=2, ensure_ascii=False) + "\n")


@app.command()
def chat(
    run: Path = typer.Argument(..., help="Run directory of a decoder (best: one fine-tuned with --task chat)."),
    system: Optional[str] = typer.Option(None, help="System message to start with."),
    max_new_tokens: int = typer.Option(128, help="Most tokens per reply."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0 = greedy)."),
    top_k: Optional[int] = typer.Option(40, help="Sample among the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, help="Sample among the most likely tokens holding probability p."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling."),
) -> None:
    """Talk to a model in the terminal: replies stream as they are generated; the history is kept
    (the oldest turns are dropped when it outgrows the model's context). Commands: /reset clears
    the history, /system TEXT sets the system message, /quit (or Ctrl-D) leaves.

    Example: candorlm chat runs/pd-chat --temperature 0.7
    """
    from candorlm.lm import load
    from candorlm.tasks.chat import ChatSession, repl

    lm = load(run)
    session = ChatSession(lm, system=system, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=seed)
    repl(session, input_fn=input, write=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
         notice=lambda text: console.print(f"[dim]{escape(text)}[/dim]"))


# ---- privacy and security (issue 6) ----


def _passphrase(asked: bool, confirm: bool) -> Optional[str]:
    import os

    if not asked:
        return None
    from candorlm.io.sealed import ENV_PASSPHRASE

    if os.environ.get(ENV_PASSPHRASE):
        return os.environ[ENV_PASSPHRASE]
    if not sys.stdin.isatty():
        raise CandorError(f"--passphrase: there is no terminal to ask on; set {ENV_PASSPHRASE} instead")
    return typer.prompt("passphrase", hide_input=True, confirmation_prompt=confirm)


def _key(key_file: Optional[Path], passphrase: bool, confirm: bool = False, required: bool = True):
    from candorlm.io.sealed import resolve_key

    key = resolve_key(key_file, _passphrase(passphrase, confirm))
    if key is None and required:
        raise CandorError("no key: give --key-file FILE (make one with `candorlm keygen -o FILE`), --passphrase, "
                          "or set CANDORLM_KEY")
    return key


@app.command()
def scrub(
    sources: List[str] = typer.Argument(..., help="Corpus: files, directories, JSONL or builtin:NAME."),
    out: Path = typer.Option(..., "-o", "--out", help="Scrubbed corpus to write: .jsonl, else blank-line separated text."),
    operator: str = typer.Option("placeholder", help="mask, placeholder (<PHONE>), pseudonym (consistent fakes) or drop."),
    report: Optional[Path] = typer.Option(None, help="Write counts per type and masked examples to this JSON file."),
    types: Optional[str] = typer.Option(None, help="Comma-separated types (default all): CN_ID, PHONE, EMAIL, "
                                        "BANK_CARD, IP_ADDRESS, URL_CREDENTIALS, PASSPORT, VEHICLE_PLATE, PERSON."),
    key_file: Optional[Path] = typer.Option(None, help="Pseudonym key (same key, same fakes across corpora); "
                                            "default: a random one for this run."),
    text_field: str = typer.Option("text", help="JSONL field that holds the text."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: cores, at most 4)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Find and replace personal data (IDs, phones, e-mails, cards, IPs, URL credentials, passports,
    plates, names) in a corpus.

    Example: candorlm scrub notes/ -o notes.scrubbed.jsonl --operator pseudonym --report scrub.json
    """
    from candorlm.io.sealed import resolve_key
    from candorlm.privacy.scrub import scrub as run_scrub

    key = resolve_key(key_file) if key_file else None
    rep = run_scrub(sources, out, operator=operator, types=types.split(",") if types else None,
                    key=key.raw if key else None, report=report, text_field=text_field, workers=workers,
                    overwrite=overwrite)
    found = ", ".join(f"{t} {n:,}" for t, n in rep.counts.items() if n) or "nothing"
    console.print(f"wrote {out}: {rep.documents:,} documents ({rep.documents_changed:,} changed, "
                  f"{rep.documents_dropped:,} dropped), {rep.mb_per_s:.2f} MB/s; found {found}")
    if rep.blank_lines_joined:
        console.print(f"{rep.blank_lines_joined:,} documents had blank lines inside, joined so each stays one "
                      f"document in text output; name the output .jsonl to keep them")


@app.command()
def keygen(
    out: Path = typer.Option(..., "-o", "--out", help="Key file to create (readable by you only)."),
) -> None:
    """Make a random AES-256 key file for encrypt, decrypt and --key-file.

    Example: candorlm keygen -o ~/.candorlm.key
    """
    from candorlm.privacy.crypto import write_key_file

    console.print(f"wrote {write_key_file(out)}; keep it safe: without it encrypted files cannot be read")


@app.command()
def encrypt(
    path: Path = typer.Argument(..., help="File or directory: a corpus, a data directory or a run directory."),
    out: Path = typer.Option(..., "-o", "--out", help="Encrypted copy to write (same file names)."),
    key_file: Optional[Path] = typer.Option(None, help="Key file from `candorlm keygen` (or set CANDORLM_KEY)."),
    passphrase: bool = typer.Option(False, "--passphrase", help="Derive the key from a passphrase (scrypt); "
                                    "asked for, or taken from CANDORLM_PASSPHRASE."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Encrypt files with AES-256-GCM in authenticated chunks; training and generation read them
    with --key-file.

    Example: candorlm encrypt data/pd -o data/pd.enc --key-file ~/.candorlm.key
    """
    from candorlm.privacy.crypto import encrypt_path

    written = encrypt_path(path, out, _key(key_file, passphrase, confirm=True), overwrite=overwrite)
    console.print(f"encrypted {len(written):,} files into {out}")


@app.command()
def decrypt(
    path: Path = typer.Argument(..., help="Encrypted file or directory."),
    out: Path = typer.Option(..., "-o", "--out", help="Plain copy to write."),
    key_file: Optional[Path] = typer.Option(None, help="Key file (or set CANDORLM_KEY)."),
    passphrase: bool = typer.Option(False, "--passphrase", help="The key is a passphrase (or CANDORLM_PASSPHRASE)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Decrypt files written by `candorlm encrypt`; a wrong key, a damaged or cut file is an error,
    never garbage.

    Example: candorlm decrypt data/pd.enc -o data/pd --key-file ~/.candorlm.key
    """
    from candorlm.privacy.crypto import decrypt_path

    written = decrypt_path(path, out, _key(key_file, passphrase), overwrite=overwrite)
    console.print(f"decrypted {len(written):,} files into {out}")


@app.command()
def verify(
    path: Path = typer.Argument(..., help="Run or data directory (checked against its SHA256SUMS), or an encrypted file."),
    key_file: Optional[Path] = typer.Option(None, help="Also authenticate every encrypted file with this key."),
    update: bool = typer.Option(False, help="Write a fresh SHA256SUMS instead of checking (after a deliberate change)."),
) -> None:
    """Check that a run or data directory is exactly as written (sha256 of every file).

    Example: candorlm verify runs/pd
    """
    from candorlm.privacy.integrity import verify as run_verify
    from candorlm.privacy.integrity import write_manifest

    if update:
        console.print(f"wrote {write_manifest(path)}")
        return
    report = run_verify(path, key=_key(key_file, False, required=False) if key_file else None)
    extra = f"; {len(report.extra)} files not in the manifest: {', '.join(report.extra[:5])}" if report.extra else ""
    console.print(f"{path}: OK, {report.checked:,} files verified{extra}")


@app.command()
def backup(
    src: Path = typer.Argument(..., help="Run or data directory."),
    dest: Path = typer.Argument(..., help="Where the copy goes."),
    overwrite: bool = typer.Option(False, help="Replace an existing destination."),
) -> None:
    """Copy a directory and prove the copy matches the source's SHA256SUMS, file by file.

    Example: candorlm backup runs/pd /mnt/backup/runs/pd
    """
    from candorlm.privacy.integrity import backup as run_backup

    report = run_backup(src, dest, overwrite=overwrite)
    console.print(f"copied {src} to {dest}: {report.checked:,} files verified")


@app.command()
def audit(
    run: Path = typer.Argument(..., help="Run directory."),
    data: Optional[Path] = typer.Option(None, help="The run's data directory, if it has moved."),
    samples: int = typer.Option(200, help="Training and held-out documents for extraction and membership inference."),
    candidates: int = typer.Option(2000, help="Random secrets each canary is ranked against."),
    generations: int = typer.Option(50, help="Sampled generations checked for personal data."),
    seed: int = typer.Option(0, help="Random seed."),
    key_file: Optional[Path] = typer.Option(None, help="Key of an encrypted run or data (or set CANDORLM_KEY)."),
) -> None:
    """Measure what a model leaks: canary exposure, extraction, membership inference and personal data
    in its generations; writes RUN/evals/privacy.json.

    Example: candorlm audit runs/pd
    """
    from candorlm.privacy.audit import audit as run_audit

    result = run_audit(run, data=data, samples=samples, candidates=candidates, generations=generations, seed=seed,
                       key=_key(key_file, False, required=False) if key_file else None)
    if result["canaries"]:
        for repeats, row in result["canaries"]["by_repeats"].items():
            console.print(f"canaries repeated {repeats:>3}: mean exposure {row['mean_exposure']:.1f} bits, "
                          f"{row['extracted']} of {row['canaries']} extracted")
    ex, mi, pii = result["extraction"], result["membership"], result["pii_regurgitation"]
    console.print(f"extraction (exact next {ex['suffix_tokens']} tokens): train {ex['train']['exact_rate']:.3f}, "
                  f"held-out {ex['heldout']['exact_rate']:.3f}; membership AUC {mi['auc']}; "
                  f"personal data in generations: {pii['detected']} found, {pii['in_training_data']} verbatim in training")
    console.print(f"wrote {Path(run) / 'evals' / 'privacy.json'}")


# ---- generalization, scaling and the report card (issue 7) ----
@app.command()
def sweep(
    data: Path = typer.Option(..., help="Data directory from `candorlm prepare` (the same for every size)."),
    out: Path = typer.Option(..., "--out", help="Sweep directory: one run per size, sweep.json, sweep.png."),
    presets: str = typer.Option("nano,micro,tiny", help="Comma-separated size presets, at least two."),
    steps: int = typer.Option(400, help="Optimizer steps per size (the same token budget for each)."),
    batch_size: int = typer.Option(8, help="Sequences per step."),
    seq_len: int = typer.Option(256, help="Tokens per sequence."),
    seed: int = typer.Option(1337, help="Random seed (weights, data order), the same for every size."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: physical cores)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value for every size."),
    overwrite: bool = typer.Option(False, help="Replace a sweep in --out."),
) -> None:
    """Train several model sizes with the same data, seed and token budget; fit validation loss
    against training FLOPs and parameters (a power law) and plot it, with the extrapolation marked.

    Example: candorlm sweep --data data/pd --presets nano,micro,tiny --steps 400 --out sweeps/pd
    """
    from candorlm.scaling import sweep as run_sweep

    doc = run_sweep(data, out, [p.strip() for p in presets.split(",") if p.strip()], steps=steps,
                    batch_size=batch_size, seq_len=seq_len, seed=seed, threads=threads, overrides=overrides,
                    overwrite=overwrite)
    for r in doc["sizes"]:
        console.print(f"{r['preset']:>6}: {r['parameters']:>10,} parameters ({r['non_embedding_parameters']:,} "
                      f"without embeddings), {r['flops']:.3g} FLOPs, val loss {r['val_loss']:.4f}, "
                      f"{r['val_bpb']:.4f} bits/byte, {r['wall_s']:.0f} s", highlight=False)
    f = doc["fit"]
    console.print(f"fit: loss = {f['loss_vs_flops']['a']:.3g} x FLOPs^-{f['loss_vs_flops']['alpha']:.4f}; "
                  f"loss = {f['loss_vs_non_embedding_parameters']['a']:.3g} x N^-"
                  f"{f['loss_vs_non_embedding_parameters']['alpha']:.4f}; total {doc['wall_s']:.0f} s", highlight=False)
    console.print(f"wrote {out / 'sweep.json'} and {out / doc['plot']}")


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
) -> None:
    """Write the limitations report card: RUN/report.html (self-contained), report.json and
    report.md, one section per limit (Cost, Compute, Interpretability, Privacy, Generalization); a
    section without data names the command that produces it.

    Example: candorlm report runs/demo
    """
    from candorlm.report import report

    doc = report(run)
    for s in doc["sections"]:
        console.print(f"{s['title']:<17} {s['status']:<8} {s['summary']}", highlight=False)
    console.print(f"wrote {run / 'report.html'}, report.json and report.md")


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
