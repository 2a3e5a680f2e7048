"""Ledger sessions for using a trained model: `candorlm generate` records each call as a
`generate` session in the run's ledger.json (time, new tokens/s, FLOPs, MFU, memory, energy,
money, CO2), next to the `train` and `evaluate` sessions the trainer writes.

An encrypted run (`candorlm encrypt`) is not metered: its files, ledger.json among them, are
sealed and listed in its SHA256SUMS, and candorlm does not rewrite a sealed run; a note says so.
Its ledger is not damaged, and is never called so."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from candorlm.errors import CandorError
from candorlm.ledger.book import record
from candorlm.ledger.flops import generation_flops
from candorlm.ledger.meter import Meter, figure
from candorlm.rundir import RunDir

if TYPE_CHECKING:
    from candorlm.lm import LanguageModel

log = logging.getLogger("candorlm")


class GenerationUsage:
    """What a model generated: each sequence's prompt and new-token counts, and their FLOPs."""

    def __init__(self, lm: "LanguageModel"):
        self.cfg = lm.model.cfg
        self.prompt_tokens = self.new_tokens = self.sequences = 0
        self.flops = 0

    def add(self, prompt_len: int, new_tokens: int) -> None:
        self.sequences += 1
        self.prompt_tokens += prompt_len
        self.new_tokens += new_tokens
        self.flops += generation_flops(self.cfg, prompt_len, new_tokens)


@contextlib.contextmanager
def metered_generation(lm: "LanguageModel", run_dir: str | Path) -> Iterator[GenerationUsage]:
    """Meter everything `lm` generates inside the block and add it to run_dir's ledger.json
    as one `generate` session. A ledger that cannot be written is reported, never fatal: the
    text was generated. An encrypted run is left as it is (see the module docstring)."""
    param = next(lm.model.parameters())
    precision = "bf16" if param.dtype.is_floating_point and param.dtype.itemsize == 2 else "fp32"
    meter = Meter("generate", param.device, precision).start()
    usage = lm.usage = GenerationUsage(lm)
    try:
        yield usage
    finally:
        lm.usage = None
        meter.count(usage.new_tokens, usage.flops)
        session = meter.finish(
            "analytic: candorlm.ledger.flops.generation_flops per sequence (prompt forward pass, then one "
            "cached step per new token), summed", extra={
                "sequences": figure(usage.sequences, "sequences", "prompts continued"),
                "prompt_tokens": figure(usage.prompt_tokens, "tokens", "prompt tokens read (not in tokens/s)"),
            })
        session["tokens"]["method"] = "new tokens generated"
        if _sealed(run_dir):
            log.info("%s is encrypted, so this generation is not added to its ledger.json (candorlm does not rewrite "
                     "the files of an encrypted run); to meter generation, use a decrypted copy (`candorlm decrypt`)",
                     run_dir)
        else:
            _record(run_dir, session)


def _sealed(run_dir: str | Path) -> bool:
    """Whether the run is encrypted: its ledger, or (before it has one) its weights."""
    from candorlm.io.sealed import is_encrypted

    run = RunDir(Path(run_dir))
    return is_encrypted(run.ledger) or is_encrypted(run.weights)


def _record(run_dir: str | Path, session: dict) -> None:
    from candorlm.io.manifest import update_manifest

    try:
        record(run_dir, "generate", session)
        update_manifest(run_dir, [RunDir(Path(run_dir)).ledger])  # the run's SHA256SUMS stays true
    except (OSError, ValueError, CandorError) as exc:
        log.warning("generation was not added to %s's ledger.json: %s", run_dir, exc)
