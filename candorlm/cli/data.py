"""Data in and models out: prepare a corpus, train a tokenizer, export and import runs."""

from __future__ import annotations

from typing import Any

import typer

from candorlm.cli.options import KeyFile, NoVerify, options_from, reading_with
from candorlm.errors import CandorError

PANEL = "Data and models"


@options_from("candorlm.prepare:prepare", skip=("filters",))
@options_from("candorlm.privacy.prepare_filters:prepare_filters", skip=("workers", "val_fraction"),
              flags={"canary_repeats": "--repeats"})
def prepare(key_file: KeyFile = None, **options: Any) -> None:
    """Read a corpus, train a tokenizer and write token shards for training.

    Example: candorlm prepare builtin:peoples-daily --out data/pd --tokenizer bpe --vocab-size 8192

    Example: candorlm prepare notes/ --out data/notes --scrub --canaries 4 --repeats 1,10,100
    """
    import inspect

    from candorlm.prepare import prepare as run_prepare
    from candorlm.privacy.prepare_filters import prepare_filters
    from candorlm.progress import console

    # privacy's options build the filters; prepare (the data layer) only applies them
    wanted = set(inspect.signature(prepare_filters).parameters) - {"workers", "val_fraction"}  # prepare's own
    filter_options = {k: options.pop(k) for k in list(options) if k in wanted}
    val_fraction = options.get("val_fraction", inspect.signature(run_prepare).parameters["val_fraction"].default)
    filters = prepare_filters(**filter_options, workers=options.get("workers"), val_fraction=val_fraction)
    with reading_with(key_file):
        meta = run_prepare(**options, filters=filters)
    for path, enc in meta.encodings.items():
        if enc not in ("utf-8", "utf-8-sig"):
            console.print(f"{path}: decoded as {enc.upper()}")
    console.print(
        f"wrote {options['out']}: {meta.documents['train']:,} training and {meta.documents['val']:,} validation "
        f"documents, {meta.tokens['train']:,} + {meta.tokens['val']:,} tokens ({meta.tokenizer_kind}, "
        f"vocabulary {meta.vocab_size:,})"
    )


@options_from("candorlm.prepare:train_tokenizer_file")
def train_tokenizer(**options: Any) -> None:
    """Train a tokenizer on a corpus and save it as tokenizer.json.

    Example: candorlm tokenizer train builtin:peoples-daily --out tok.json --kind char --vocab-size 6000
    """
    from candorlm.prepare import train_tokenizer_file
    from candorlm.progress import console

    tok = train_tokenizer_file(**options)
    console.print(f"wrote {options['out']} ({tok.kind}, vocabulary {tok.vocab_size:,})")


@options_from("candorlm.interop.hf:export_hf")
def export(format: str = typer.Option("hf", "--format", help="Export format: hf (Hugging Face Llama)."),
           key_file: KeyFile = None, no_verify: NoVerify = False, **options: Any) -> None:
    """Export a run to another format; `hf` loads in transformers.LlamaForCausalLM.

    Example: candorlm export runs/pd --format hf --out hf/pd
    """
    if format != "hf":
        raise CandorError(f"unknown export format '{format}'. Valid: hf.")
    from candorlm.interop.hf import export_hf
    from candorlm.progress import console

    with reading_with(key_file, no_verify):
        console.print(f"wrote {export_hf(**options)}")


@options_from("candorlm.interop.hf:import_hf")
def import_hf(format: str = typer.Option("hf", "--format", help="Source format: hf."), **options: Any) -> None:
    """Import a Hugging Face Llama model directory as a candorlm run.

    Example: candorlm import hf/pd --out runs/pd-imported
    """
    if format != "hf":
        raise CandorError(f"unknown import format '{format}'. Valid: hf.")
    from candorlm.interop.hf import import_hf as run_import
    from candorlm.progress import console

    console.print(f"wrote {run_import(**options).path}")
