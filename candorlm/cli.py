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
    config: Optional[Path] = typer.Option(None, help="TOML file with [model], [data], [train] sections."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps to train for."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on the validation split every N steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed (weights, data order)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its newest checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace the run in --out."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: --set train.lr=1e-3 (repeatable)."),
    dp_epsilon: Optional[float] = typer.Option(None, help="Train with DP-SGD spending this privacy budget epsilon."),
    dp_delta: Optional[float] = typer.Option(None, help="DP delta (default: min(1e-5, 1/(10 x training windows)))."),
    dp_max_grad_norm: Optional[float] = typer.Option(None, help="DP per-window gradient clipping bound (default 1.0)."),
    key_file: Optional[Path] = typer.Option(None, help="Key to read encrypted data with (or set CANDORLM_KEY)."),
) -> None:
    """Train a language model; writes config, checkpoints, metrics.jsonl and model.safetensors to --out.

    Example: candorlm train --data data/pd --preset tiny --out runs/pd --max-steps 500

    Example: candorlm train --data data/pd --out runs/pd-dp --dp-epsilon 8   (differentially private)

    Ctrl-C saves a checkpoint and stops; --resume continues exactly where it stopped.
    """
    from candorlm.privacy.crypto import resolve_key, use_key
    from candorlm.training import train as run_train

    settings = {k: v for k, v in dict(max_steps=max_steps, save_every=save_every, eval_every=eval_every,
                                      seed=seed, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
                                      dp_max_grad_norm=dp_max_grad_norm).items() if v is not None}
    if preset is None and config is None:
        preset = "tiny"
    with use_key(resolve_key(key_file)):
        result = run_train(out, data=data, preset=preset, config=config, overrides=overrides, resume=resume,
                           overwrite=overwrite, **settings)
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
    """Continue a prompt; prints only the generated text on stdout, as it is generated.

    Example: candorlm generate runs/pd --prompt "中国经济" --max-new-tokens 50 --temperature 0.8 --top-k 40 --seed 0
    """
    from candorlm.lm import load
    from candorlm.privacy.crypto import resolve_key

    lm = load(run, key=resolve_key(key_file))
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


# ---- privacy and security (issue 6) ----


def _passphrase(asked: bool, confirm: bool) -> Optional[str]:
    import os

    if not asked:
        return None
    from candorlm.privacy.crypto import ENV_PASSPHRASE

    if os.environ.get(ENV_PASSPHRASE):
        return os.environ[ENV_PASSPHRASE]
    if not sys.stdin.isatty():
        raise CandorError(f"--passphrase: there is no terminal to ask on; set {ENV_PASSPHRASE} instead")
    return typer.prompt("passphrase", hide_input=True, confirmation_prompt=confirm)


def _key(key_file: Optional[Path], passphrase: bool, confirm: bool = False, required: bool = True):
    from candorlm.privacy.crypto import resolve_key

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
    from candorlm.privacy.crypto import resolve_key
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
