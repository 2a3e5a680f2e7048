import hashlib
import json

import numpy as np
import pytest

from candorlm.errors import CandorError
from candorlm.prepare import prepare
from candorlm.shards import BatchSampler, ShardSet, is_validation


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_prepare_writes_shards_and_meta(data_dir, corpus_file):
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 512
    assert meta["documents"]["train"] > meta["documents"]["val"] > 0
    shards = ShardSet(data_dir)
    train = np.concatenate(shards.arrays("train"))
    assert len(train) == meta["tokens"]["train"]
    tok = shards.tokenizer
    assert train[0] == tok.bos_id and (train == tok.eos_id).sum() == meta["documents"]["train"]
    # The training split decodes back to exactly the training documents.
    docs = [d for d in corpus_file.read_text(encoding="utf-8").strip("\n").split("\n\n")]
    train_docs = [d for d in docs if not is_validation(d, 0.1)]
    first = train[1:list(train).index(tok.eos_id)]
    assert tok.decode(first.tolist()) == train_docs[0]


def test_same_input_gives_byte_identical_shards(tmp_path, corpus_file):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare([str(corpus_file)], a, vocab_size=400, val_fraction=0.1)
    prepare([str(corpus_file)], b, vocab_size=400, val_fraction=0.1)
    assert _digest(a) == _digest(b)


@pytest.mark.slow
def test_word_tokenizer_parallel_equals_serial(tmp_path, corpus_file):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare([str(corpus_file)], a, tokenizer="word", vocab_size=2000, val_fraction=0.1, workers=1)
    prepare([str(corpus_file)], b, tokenizer="word", vocab_size=2000, val_fraction=0.1, workers=2)
    assert _digest(a) == _digest(b)


def test_split_is_by_document_content():
    assert is_validation("同一篇文章", 0.5) == is_validation("同一篇文章", 0.5)
    share = np.mean([is_validation(f"document {i}", 0.1) for i in range(5000)])
    assert 0.08 < share < 0.12


def test_empty_corpus_leaves_nothing_behind(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(CandorError, match="empty"):
        prepare([str(empty)], out, vocab_size=400)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["empty.txt"]


def test_existing_output_is_refused(tmp_path, corpus_file, data_dir):
    with pytest.raises(CandorError, match="--overwrite"):
        prepare([str(corpus_file)], data_dir, vocab_size=400)


def test_sampler_state_resumes_the_same_batches(data_dir):
    windows = ShardSet(data_dir).windows("train", 32)
    a = BatchSampler(windows, 4, seed=1)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    n = len(windows) // 4 + 5  # crosses an epoch boundary
    expected = [a.next_batch()[0] for _ in range(n)]
    b = BatchSampler(windows, 4, seed=1)
    b.load_state_dict(state)
    got = [b.next_batch()[0] for _ in range(n)]
    assert all((x == y).all() for x, y in zip(expected, got))
    assert b.epoch >= 1


def test_ranks_see_disjoint_windows(data_dir):
    windows = ShardSet(data_dir).windows("train", 32)
    seen = []
    for rank in range(2):
        s = BatchSampler(windows, 1, seed=3, rank=rank, world_size=2)
        seen.append({tuple(s.next_batch()[0][0].tolist()) for _ in range(len(windows) // 2)})
    assert not seen[0] & seen[1]


def test_targets_are_inputs_shifted(data_dir):
    x, y = ShardSet(data_dir).windows("val", 16).get([0, 1])
    assert (x[:, 1:] == y[:, :-1]).all() and x[1, 0] == y[0, -1]


def test_truncated_shard_is_detected(tmp_path, corpus_file):
    out = tmp_path / "d"
    prepare([str(corpus_file)], out, vocab_size=400, val_fraction=0.1)
    shard = out / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CandorError, match="truncated"):
        ShardSet(out).arrays("train")


def test_aligned_windows_start_at_documents_and_cover_every_token():
    from candorlm.shards import AlignedWindows

    bos = 1
    docs = [[bos, 5, 6, 7, 8, 9, 10, 2], [bos, 11, 2], [bos, 12, 13, 14, 15, 2]]  # <|bos|> ... <|eos|>
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    windows = AlignedWindows([tokens], 4, bos)
    x, _ = windows.get(range(len(windows)))
    firsts = [row[0] for row in x.tolist()]
    # doc 1 (8 tokens): at 0 and 4; doc 2 (3): at 8; doc 3 (6): at 11, and 15 has too few tokens after it
    assert firsts == [bos, 8, bos, bos]
    seen = {int(t) for row in x for t in row}
    assert seen >= set(tokens[:-2].tolist())


def test_aligned_windows_of_real_data_start_with_bos(data_dir):
    shards = ShardSet(data_dir)
    aligned = shards.windows("train", 32, aligned=True)
    plain = shards.windows("train", 32)
    assert len(aligned) >= len(plain) * 0.9
    x, y = aligned.get(range(len(aligned)))
    assert (x[:, 1:] == y[:, :-1]).all()
    starting = int((x[:, 0] == shards.tokenizer.bos_id).sum())  # every document starts one (the last may be short)
    assert shards.meta.documents["train"] - 1 <= starting <= shards.meta.documents["train"]


def test_the_sampler_draws_a_batch_of_any_size(data_dir):
    s = BatchSampler(ShardSet(data_dir).windows("train", 16), 4, seed=0)
    assert s.next_batch()[0].shape == (4, 16) and s.next_batch(2)[0].shape == (2, 16)
