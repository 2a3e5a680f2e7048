"""Corpus to data directory: read, train (or reuse) a tokenizer, write shards; all or nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from candorlm.corpus import Corpus
from candorlm.io.files import atomic_path, swapped_into_place
from candorlm.io.manifest import write_manifest
from candorlm.io.outputs import claim_dir, claim_file, record_file, write_marker
from candorlm.shards import ShardMeta, looks_like_old_data, save_meta, write_shards
from candorlm.tokenizer import DEFAULT_VOCAB_SIZE, Tokenizer, TokenizerKind, train_tokenizer

log = logging.getLogger("candorlm")


def train_tokenizer_file(sources: Sequence[str], out: str | Path, kind: TokenizerKind = "bpe",
                         vocab_size: int = DEFAULT_VOCAB_SIZE, text_field: str = "text",
                         overwrite: bool = False) -> Tokenizer:
    """Train a tokenizer on a corpus and save it as `out` (a tokenizer.json path); an existing
    file is replaced only with `overwrite` and only when candorlm wrote it.

    Args:
        sources: Corpus: files, directories, JSONL or builtin:NAME.
        out: Where to write tokenizer.json.
        kind: bpe (byte-level BPE), char (characters) or word (jieba words).
        vocab_size: Vocabulary size, special tokens included.
        text_field: JSONL field that holds the text.
        overwrite: Replace a tokenizer file candorlm wrote there.
    """
    out = Path(out)
    claim_file(out, "tokenizer", overwrite=overwrite, inputs=sources)
    corpus = Corpus(sources, text_field=text_field)
    tokenizer = train_tokenizer(corpus.texts(), kind, vocab_size)
    corpus.check_not_empty()
    with atomic_path(out) as tmp:
        tokenizer.save(tmp)
    record_file(out, "tokenizer", "candorlm tokenizer train")
    return tokenizer


def prepare(sources: Sequence[str], out: str | Path, *, tokenizer: TokenizerKind = "bpe",
            vocab_size: int = DEFAULT_VOCAB_SIZE, tokenizer_file: str | Path | None = None, text_field: str = "text",
            val_fraction: float = 0.05, workers: int | None = None, overwrite: bool = False,
            scrub: bool = False, scrub_operator: str = "placeholder", canaries: int = 0,
            canary_repeats: str | Sequence[int] = "10", canary_format: str | None = None,
            canary_seed: int = 0) -> ShardMeta:
    """Prepare a corpus for training: `out/` gets tokenizer.json, token shards and meta.json.

    - scrub: replace personal data on the way in (candorlm.privacy.scrub; report in
      scrub_report.json).
    - canaries: plant that many random secrets per repeat count (candorlm.privacy.canaries;
      list in canaries.json).

    A SHA256SUMS manifest is written last.

    Everything is written to a temporary sibling directory first and renamed into place at
    the end, so a failure or Ctrl-C never leaves a half-written data directory behind.

    Args:
        sources: Text files, directories, JSONL files or builtin:NAME (peoples-daily, reviews, python-docs).
        out: Data directory to create.
        tokenizer: Tokenizer kind: bpe, char or word (jieba).
        vocab_size: Vocabulary size, special tokens included.
        tokenizer_file: Use this tokenizer.json instead of training one.
        text_field: JSONL field that holds the text.
        val_fraction: Share of documents held out for validation.
        workers: Processes for word tokenization and scrubbing (default: all cores).
        overwrite: Replace an existing data directory.
        scrub: Replace personal data with typed placeholders on the way in (see `candorlm scrub`);
            report in DATA_DIR/scrub_report.json.
        scrub_operator: With scrub: mask, placeholder (<PHONE>), pseudonym (consistent fakes) or drop.
        canaries: Plant N random secrets per repeat count, for `candorlm audit`.
        canary_repeats: How many copies of each canary: a count or a list, e.g. 1,10,100.
        canary_format: Canary text, # for each random digit (default: 我的银行卡号是####-####).
        canary_seed: Seed of the canaries' random digits.
    """
    out = Path(out)
    claim_dir(out, "data", overwrite=overwrite, inputs=[*sources, *([tokenizer_file] if tokenizer_file else [])],
              legacy=looks_like_old_data)
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
        write_manifest(tmp)  # SHA256SUMS: `candorlm verify DATA_DIR` checks it
        write_marker(tmp, "data", "candorlm prepare")
    return meta
