"""Data in and models out: prepare a corpus, train a tokenizer, export and import runs."""

from __future__ import annotations

from typing import Any

import typer

from candorlm.cli.options import KeyFile, NoVerify, options_from, reading_with
from candorlm.errors import CandorError

PANEL = "Data and models"


@options_from("candorlm.prepare:prepare", flags={"canary_repeats": "--repeats"})
def prepare(key_file: KeyFile = None, **options: Any) -> None:
    """Read a corpus, train a tokenizer and write token shards for training.

    Example: candorlm prepare builtin:peoples-daily --out data/pd --tokenizer bpe --vocab-size 8192

    Example: candorlm prepare notes/ --out data/notes --scrub --canaries 4 --repeats 1,10,100
    """
    from candorlm.prepare import prepare as run_prepare
    from candorlm.progress import console

    with reading_with(key_file):
        meta = run_prepare(**options)
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
