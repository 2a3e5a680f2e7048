"""Corpus to data directory: read, train (or reuse) a tokenizer, write shards; all or nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from candorlm.corpus import Corpus
from candorlm.errors import CandorError
from candorlm.io.files import swapped_into_place
from candorlm.shards import ShardMeta, save_meta, write_shards
from candorlm.tokenizer import Tokenizer, TokenizerKind, train_tokenizer

log = logging.getLogger("candorlm")


def train_tokenizer_file(sources: Sequence[str], out: str | Path, kind: TokenizerKind = "bpe",
                         vocab_size: int = 8192, text_field: str = "text") -> Tokenizer:
    """Train a tokenizer on a corpus and save it as `out` (a tokenizer.json path)."""
    corpus = Corpus(sources, text_field=text_field)
    tokenizer = train_tokenizer(corpus.texts(), kind, vocab_size)
    corpus.check_not_empty()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    return tokenizer


def prepare(sources: Sequence[str], out: str | Path, *, tokenizer: TokenizerKind = "bpe",
            vocab_size: int = 8192, tokenizer_file: str | Path | None = None, text_field: str = "text",
            val_fraction: float = 0.05, workers: int | None = None, overwrite: bool = False,
            scrub: bool = False, scrub_operator: str = "placeholder", canaries: int = 0,
            canary_repeats: str | Sequence[int] = (10,), canary_format: str | None = None,
            canary_seed: int = 0) -> ShardMeta:
    """Prepare a corpus for training: `out/` gets tokenizer.json, token shards and meta.json.

    - scrub: replace personal data on the way in (candorlm.privacy.scrub; report in
      scrub_report.json).
    - canaries: plant that many random secrets per repeat count (candorlm.privacy.canaries;
      list in canaries.json).

    A SHA256SUMS manifest is written last.

    Everything is written to a temporary sibling directory first and renamed into place at
    the end, so a failure or Ctrl-C never leaves a half-written data directory behind.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CandorError(f"{out} already exists and is not empty. Choose another --out, or pass --overwrite.")
    corpus = Corpus(sources, text_field=text_field)
    scrubbed = planted = None
    if scrub:
        from candorlm.privacy.scrub import ScrubbedCorpus

        corpus = scrubbed = ScrubbedCorpus(corpus, scrub_operator, workers=workers)
    if canaries:
        from candorlm.privacy.canaries import DEFAULT_FORMAT, CanaryCorpus, make_canaries, parse_repeats

        planted = make_canaries(canaries, parse_repeats(canary_repeats), canary_format or DEFAULT_FORMAT,
                                canary_seed, val_fraction)
        corpus = CanaryCorpus(corpus, planted)
    with swapped_into_place(out) as tmp:
        if tokenizer_file:
            tok = Tokenizer.load(tokenizer_file)
        else:
            log.info("training a %s tokenizer (vocabulary %d)", tokenizer, vocab_size)
            tok = train_tokenizer(corpus.texts(), tokenizer, vocab_size)
            corpus.check_not_empty()
        tok.save(tmp / "tokenizer.json")
        total = corpus.report.chars * 3 if corpus.report.chars else None  # rough byte total for the bar
        meta = write_shards(tok, corpus, tmp, val_fraction=val_fraction, workers=workers, total_bytes=total)
        corpus.check_not_empty()
        meta.sources = [str(s) for s in sources]
        meta.encodings = corpus.report.encodings
        meta.skipped = corpus.report.skipped
        save_meta(meta, tmp)
        if scrubbed is not None:
            scrubbed.scrub_report.save(tmp / "scrub_report.json")
        if planted is not None:
            planted.save(tmp / "canaries.json")
        from candorlm.privacy.integrity import write_manifest

        write_manifest(tmp)  # SHA256SUMS: `candorlm verify DATA_DIR` checks it
    return meta
