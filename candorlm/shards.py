"""Token shards: a corpus tokenized into memory-mapped files, split by document, and sampled.

Layout of a data directory written by `write_shards`:
    meta.json               counts, dtype, split rule, sources
    tokenizer.json          the tokenizer that produced the ids
    train_000.bin ...       token ids (uint16 when the vocabulary fits, else uint32)
    val_000.bin ...

Each document is stored as `<|bos|> tokens <|eos|>`. A document goes to the validation split
when a hash of its text falls below `val_fraction`: the same text always lands on the same
side, whatever the order of the corpus, and the same input gives byte-identical shards.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from candorlm.corpus import Document, batched, document_hash
from candorlm.errors import CandorError
from candorlm.io.sealed import is_encrypted, read_bytes, read_text
from candorlm.io.sealedtree import open_tree, tree_format
from candorlm.progress import progress_bar
from candorlm.tokenizer import Tokenizer

SPLITS = ("train", "val")
FORMAT_VERSION = 1
_BATCH_DOCS = 256


def is_validation(text: str, val_fraction: float) -> bool:
    """The split rule: a stable hash of the text, below the fraction, goes to validation."""
    return document_hash(text) < val_fraction * 2**64


@dataclass
class ShardMeta:
    vocab_size: int
    dtype: str
    val_fraction: float
    tokenizer_kind: str
    tokens: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    documents: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    bytes: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    files: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    sources: list[str] = field(default_factory=list)
    encodings: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class _ShardWriter:
    """Appends token arrays to `<split>_NNN.bin`, starting a new file every `shard_tokens` tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.files: list[str] = []
        self._f = None
        self._count = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._f is None or self._count >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self._count
            self._f.write(ids[:room].astype(self.dtype, copy=False).tobytes())
            self._count += min(room, len(ids))
            ids = ids[room:]

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.files):03d}.bin"
        self.files.append(name)
        self._f = open(self.out / name, "wb")
        self._count = 0

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


def write_shards(tokenizer: Tokenizer, documents: Iterable[Document], out: Path, *,
                 val_fraction: float = 0.05, shard_tokens: int = 2**28, workers: int | None = None,
                 total_bytes: int | None = None) -> ShardMeta:
    """Tokenize `documents` into `out` (which must exist and be empty) and write meta.json."""
    if not 0.0 < val_fraction < 1.0:
        raise CandorError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    dtype = token_dtype(tokenizer.vocab_size)
    meta = ShardMeta(tokenizer.vocab_size, dtype.name, val_fraction, tokenizer.kind)
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens) for s in SPLITS}
    try:
        with progress_bar("tokenizing", total=total_bytes, unit="B") as bar:
            for docs, ids_list in _encode_stream(tokenizer, documents, workers):
                for doc, ids in zip(docs, ids_list):
                    split = "val" if is_validation(doc.text, val_fraction) else "train"
                    arr = np.empty(len(ids) + 2, dtype=np.int64)
                    arr[0], arr[-1] = tokenizer.bos_id, tokenizer.eos_id
                    arr[1:-1] = ids
                    writers[split].write(arr)
                    nbytes = len(doc.text.encode("utf-8"))
                    meta.tokens[split] += len(arr)
                    meta.documents[split] += 1
                    meta.bytes[split] += nbytes
                    bar.advance(nbytes)
    finally:
        for w in writers.values():
            w.close()
    for split in SPLITS:
        meta.files[split] = writers[split].files
    if (meta.documents["val"] == 0) != (meta.documents["train"] == 0):
        empty = "validation" if meta.documents["val"] == 0 else "training"
        raise CandorError(
            f"the {empty} split is empty ({sum(meta.documents.values())} documents in all). Add more documents "
            f"(text files split into documents at blank lines) or change --val-fraction."
        )
    return meta


def _encode_stream(tokenizer: Tokenizer, documents: Iterable[Document],
                   workers: int | None) -> Iterator[tuple[list[Document], list[list[int]]]]:
    batches = _batched(documents, _BATCH_DOCS)
    if tokenizer.kind != "word" or (workers or os.cpu_count() or 1) <= 1:
        # bpe and char encode in parallel inside `tokenizers` (Rust threads).
        for docs in batches:
            yield docs, tokenizer.encode_batch([d.text for d in docs])
        return
    # jieba runs in Python: spread document batches over processes, keeping their order.
    with ProcessPoolExecutor(workers or os.cpu_count(), initializer=_init_worker,
                             initargs=(tokenizer.hf.to_str(),)) as pool:
        pending: list = []
        for docs in batches:
            pending.append((docs, pool.submit(_encode_in_worker, [d.text for d in docs])))
            if len(pending) > 4 * (workers or 2):
                docs0, fut = pending.pop(0)
                yield docs0, fut.result()
        for docs0, fut in pending:
            yield docs0, fut.result()


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    from tokenizers import Tokenizer as HFTokenizer

    _worker_tokenizer = Tokenizer(HFTokenizer.from_str(tokenizer_json))


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    assert _worker_tokenizer is not None
    return _worker_tokenizer.encode_batch(texts)


def _batched(items: Iterable[Document], n: int) -> Iterator[list[Document]]:
    return batched(items, n)  # bounded by characters too: long documents come in small batches


def save_meta(meta: ShardMeta, out: Path) -> None:
    (out / "meta.json").write_text(json.dumps(asdict(meta), indent=2, ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------- reading


DATA_ENTRIES = frozenset({"meta.json", "tokenizer.json", "special_tokens_map.json", "scrub_report.json",
                          "canaries.json", "SHA256SUMS"})


def looks_like_old_data(path: Path) -> bool:
    """A data directory written before candorlm marked its outputs: a meta.json that lists its
    shards, and nothing at the top but what `prepare` writes (hidden entries aside). The rule
    `--overwrite` uses for data directories without a marker."""
    try:
        files = json.loads((path / "meta.json").read_text(encoding="utf-8"))["files"]
        shards = {name for names in files.values() for name in names}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all(p.name in DATA_ENTRIES or p.name in shards for p in path.iterdir() if not p.name.startswith("."))


class ShardSet:
    """A prepared data directory: memory-mapped token ids per split, and the tokenizer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise CandorError(f"{self.path} is not a prepared data directory (no meta.json). "
                              f"Make one with: candorlm prepare CORPUS --out {self.path}")
        if tree_format(self.path) != "plain":  # encrypted: its keyed manifest vouches for every shard first
            open_tree(self.path).check_all()
        raw = json.loads(read_text(meta_file))
        self.meta = ShardMeta(**raw)
        self.tokenizer = Tokenizer.load(self.path / "tokenizer.json")
        self.dtype = np.dtype(self.meta.dtype)
        self._maps: dict[str, list[np.memmap]] = {}

    def arrays(self, split: str) -> list[np.memmap]:
        if split not in self._maps:
            maps = []
            for name in self.meta.files[split]:
                file = self.path / name
                if not file.is_file():
                    raise CandorError(f"shard {file} is missing; prepare the data again")
                maps.append(_open_shard(file, self.dtype))
            if sum(len(m) for m in maps) != self.meta.tokens[split]:
                raise CandorError(f"the {split} shards in {self.path} do not match meta.json (truncated?); prepare the data again")
            self._maps[split] = maps
        return self._maps[split]

    def windows(self, split: str, seq_len: int, aligned: bool = False) -> "WindowIndex":
        """The split's windows of seq_len+1 tokens; aligned: starting at document starts (AlignedWindows)."""
        if aligned:
            return AlignedWindows(self.arrays(split), seq_len, self.tokenizer.bos_id)
        return WindowIndex(self.arrays(split), seq_len)


def _open_shard(file: Path, dtype: np.dtype) -> np.ndarray:
    """A shard memory-mapped, or (when encrypted) decrypted into memory, read-only."""
    if is_encrypted(file):
        return np.frombuffer(read_bytes(file), dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="r")


class WindowIndex:
    """Non-overlapping windows of seq_len+1 tokens (inputs and shifted targets) over the shards."""

    def __init__(self, arrays: list[np.memmap], seq_len: int):
        self.arrays, self.seq_len = arrays, seq_len
        # Consecutive windows share one token (the last target is the next input) so every token is used.
        self.counts = [max(0, (len(a) - 1) // seq_len) for a in arrays]
        self.offsets = np.cumsum([0] + self.counts)
        if self.offsets[-1] == 0:
            sizes = ", ".join(str(len(a)) for a in arrays)
            raise CandorError(f"the split holds fewer than {seq_len + 1} tokens (shards of {sizes}); "
                              f"use a shorter sequence length or more text")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for i in indices:
            shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
            start = (i - int(self.offsets[shard])) * self.seq_len
            rows.append(np.asarray(self.arrays[shard][start:start + self.seq_len + 1], dtype=np.int64))
        block = torch.from_numpy(np.stack(rows))
        return block[:, :-1], block[:, 1:]


class AlignedWindows(WindowIndex):
    """Windows that start where documents start (`train.align_windows`): each document is cut
    into windows of seq_len+1 tokens from its <|bos|>; its last window runs on into the next
    document, so every token is still seen, a few (the next document's first tokens) twice.
    A model then learns each document's opening from its real start, as it is asked to generate."""

    def __init__(self, arrays: list[np.memmap], seq_len: int, bos_id: int | None):
        if bos_id is None:
            raise CandorError("aligned windows need documents marked by <|bos|>, and this tokenizer has none")
        self.arrays, self.seq_len = arrays, seq_len
        self.starts = [_aligned_starts(a, seq_len, bos_id) for a in arrays]
        self.counts = [len(s) for s in self.starts]
        self.offsets = np.cumsum([0] + self.counts)
        if self.offsets[-1] == 0:
            raise CandorError(f"the split holds no document start with {seq_len + 1} tokens after it; "
                              f"use a shorter sequence length or more text")

    def get(self, indices: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for i in indices:
            shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
            start = int(self.starts[shard][i - int(self.offsets[shard])])
            rows.append(np.asarray(self.arrays[shard][start:start + self.seq_len + 1], dtype=np.int64))
        block = torch.from_numpy(np.stack(rows))
        return block[:, :-1], block[:, 1:]


def _aligned_starts(tokens: np.ndarray, seq_len: int, bos_id: int, block: int = 1 << 24) -> np.ndarray:
    """Window starts: each <|bos|> and every seq_len tokens after it up to the next one."""
    bos = np.concatenate([np.flatnonzero(np.asarray(tokens[i:i + block]) == bos_id) + i
                          for i in range(0, len(tokens), block)] or [np.zeros(0, dtype=np.int64)])
    if not len(bos):
        return bos.astype(np.int64)
    lengths = np.append(bos[1:], len(tokens)) - bos
    counts = -(-lengths // seq_len)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    starts = np.repeat(bos, counts) + seq_len * (np.arange(int(counts.sum())) - first)
    return starts[starts + seq_len + 1 <= len(tokens)].astype(np.int64)


class BatchSampler:
    """Batches of training windows: each epoch visits every window once in a seeded shuffle.

    The state (epoch, position) is two integers, saved with each checkpoint, so a resumed run
    continues with exactly the batches an uninterrupted run would have seen. With several
    processes, every rank walks the same global order, w*batch_size windows per call, and
    rank r of w keeps every w-th of them, so ranks never overlap, all cross an epoch boundary
    together, and the state means the same at any world size (a run saved by 2 processes
    resumes in 1 with the same data).
    """

    def __init__(self, windows: WindowIndex, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(len(self.windows))
        return self._order

    def next_batch(self, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `size` windows of each rank (default: batch_size): (inputs, targets)."""
        picked: list[int] = []
        while len(picked) < (size or self.batch_size) * self.world_size:
            order = self._permutation()
            if self.position >= len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
                continue
            picked.append(int(order[self.position]))
            self.position += 1
        return self.windows.get(picked[self.rank::self.world_size])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None

    def steps_per_epoch(self, grad_accum: int = 1) -> int:
        return max(1, math.ceil(len(self.windows) / (self.batch_size * grad_accum * self.world_size)))
