"""Corpus to data directory: read, train (or reuse) a tokenizer, write shards; all or nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

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
    claim_file(out, "tokenizer", overwrite=overwrite, inputs=sources, walked=True)
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
            filters: Sequence[Callable[[Any], Any]] = ()) -> ShardMeta:
    """Prepare a corpus for training: `out/` gets tokenizer.json, token shards and meta.json.

    `filters` wrap the corpus in order, each taking a corpus and returning one (its documents
    changed, dropped or added); one with a `save_report(directory)` method writes its report
    into the data directory. The privacy features come in this way, from above:
    `candorlm.privacy.prepare_filters` builds the scrubber (scrub_report.json) and the canary
    planter (canaries.json) that `candorlm prepare --scrub --canaries N` asks for.

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
        filters: Corpus wrappers applied in order (Python only; the CLI builds them from its options).
    """
    out = Path(out)
    claim_dir(out, "data", overwrite=overwrite, inputs=[*sources, *([tokenizer_file] if tokenizer_file else [])],
              legacy=looks_like_old_data, walked=True)
    corpus: Any = Corpus(sources, text_field=text_field)
    wrapped = []
    for wrap in filters:
        corpus = wrap(corpus)
        wrapped.append(corpus)
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
        for layer in wrapped:
            if hasattr(layer, "save_report"):
                layer.save_report(tmp)
        write_manifest(tmp)  # SHA256SUMS: `candorlm verify DATA_DIR` checks it
        write_marker(tmp, "data", "candorlm prepare")
    return meta
