"""Using a model: continue prompts, or talk to it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List

import typer

from candorlm.cli.options import KeyFile, NoVerify, options_from, reading_with

PANEL = "Using a model"


@options_from("candorlm.generate:SamplingConfig")
def generate(
    run: Path = typer.Argument(..., help="Run directory."),
    prompt: List[str] = typer.Option(..., "--prompt", help="Prompt text; repeat for a batch."),
    stop: List[str] = typer.Option([], help="Stop when this text appears (repeatable)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute the whole sequence each step (slow; for "
                                  "checking)."),
    compile: bool = typer.Option(False, "--compile", help="Compile the decode step first (torch.compile: seconds "
                                 "to minutes once, then each token several times cheaper; pays for long "
                                 "generations). Fails if it cannot compile."),
    key_file: KeyFile = None, no_verify: NoVerify = False,
    **sampling: Any,
) -> None:
    """Continue a prompt; prints only the generated text on stdout, as it is generated, and adds
    the call's time, tokens/s, FLOPs, energy and cost to RUN/ledger.json (kind `generate`).

    Example: candorlm generate runs/pd --prompt "中国经济" --max-new-tokens 50 --temperature 0.8 --top-k 40 --seed 0
    """
    from candorlm.ledger.usage import metered_generation
    from candorlm.lm import load

    with reading_with(key_file, no_verify):
        lm = load(run)
    with metered_generation(lm, run):  # a `generate` session in RUN/ledger.json
        if len(prompt) == 1:
            for piece in lm.stream(prompt[0], stop=stop, use_cache=not no_cache, compile=compile or None,
                                   **sampling):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for text in lm.generate(prompt, stop=stop, use_cache=not no_cache, compile=compile or None,
                                     **sampling):
                sys.stdout.write(text + "\n")


@options_from("candorlm.tasks.chat:ChatSession", skip=("lm",))
def chat(
    run: Path = typer.Argument(..., help="Run directory of a decoder (best: one fine-tuned with --task chat)."),
    key_file: KeyFile = None, no_verify: NoVerify = False,
    **options: Any,
) -> None:
    """Talk to a model in the terminal: replies stream as they are generated; the history is kept
    (the oldest turns are dropped when it outgrows the model's context). Commands: /reset clears
    the history, /system TEXT sets the system message, /quit (or Ctrl-D) leaves.

    Example: candorlm chat runs/pd-chat --temperature 0.7
    """
    from rich.markup import escape

    from candorlm.lm import load
    from candorlm.progress import console
    from candorlm.tasks.chat import ChatSession, repl

    with reading_with(key_file, no_verify):
        lm = load(run)
    session = ChatSession(lm, **options)
    repl(session, input_fn=input, write=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
         notice=lambda text: console.print(f"[dim]{escape(text)}[/dim]"))
