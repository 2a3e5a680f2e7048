"""Translation as tagging (`finetune --task translate --head tag`): an encoder picks one character per
source token among the dictionary's candidates; refused on pairs that are not aligned; predicted,
evaluated and served like the seq2seq translator."""

import json

import pytest
import torch

import candorlm
from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.model import EncoderLM, TokenTagger
from candorlm.tasks import evaluate_task, finetune
from candorlm.tasks.data import Record
from candorlm.tasks.translate_tag import candidates, make_lexicon, vocabulary
from tests.conftest import assert_clean_error, run_cli

FAST = {"batch_size": 16, "threads": 1, "precision": "fp32"}
TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=96"]


def test_tagger_scores_each_position_and_ignores_padding():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder", vocab_size=20, d_model=32, n_layers=2, n_heads=2, max_seq_len=16)
    tagger = TokenTagger(EncoderLM(cfg), n_labels=7).eval()
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    alone = tagger(ids, torch.ones_like(ids))
    padded_ids = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 2, 0, 0, 0, 0]])
    padded = tagger(padded_ids, (padded_ids != 0).long())
    assert alone.shape == (1, 5, 7) and padded.shape == (2, 7, 7) and alone.dtype == torch.float32
    torch.testing.assert_close(padded[0, :5], alone[0], atol=1e-5, rtol=1e-5)  # padding is never attended to
    changed = tagger(torch.tensor([[1, 5, 9, 7, 2]]), torch.ones_like(ids))
    assert not torch.allclose(changed[0, 1], alone[0, 1])  # bidirectional: a later token changes an earlier tag


def test_lexicon_limits_each_source_token_to_its_characters():
    records = [Record({"source": "shi shi", "target": "是事"}, "a:1"), Record({"source": "shi ， 1", "target": "是，1"}, "a:2")]
    lexicon = make_lexicon(records)
    assert lexicon == {"shi": "是事", "，": "，", "1": "1"}  # most frequent first
    src = vocabulary((t for r in records for t in r["source"].split()), characters=False)
    tgt = vocabulary((c for r in records for c in r["target"]), characters=True)
    allowed = candidates(lexicon, src, tgt)
    row = allowed[src.token_id("shi")]
    assert {tgt.hf.id_to_token(i) for i in row.nonzero().flatten().tolist()} == {"是", "事"}
    assert src.hf.encode("shi ， 1").ids == [src.token_id("shi"), src.token_id("，"), src.token_id("1")]
    assert tgt.decode([tgt.token_id("是"), tgt.token_id("事")]) == "是事"
    assert not allowed[src.unk_id, :10].any() and allowed[src.unk_id, 10:].all()  # unknown: any character


def test_tag_head_refuses_pairs_that_are_not_aligned(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("zhong guo\t中国\nni hao\t你好吗\n" + "".join(f"bei jing x{i}\t北京{chr(0x4e00 + i)}\n" for i in range(40)),
                 encoding="utf-8")
    proc = run_cli("finetune", "--task", "translate", "--head", "tag", "--data", f, "--out", tmp_path / "o",
                   check=False)
    assert_clean_error(proc, f"{f}:2: --head tag needs aligned pairs", "2 source tokens and 3 target characters")
    assert not (tmp_path / "o").exists()


def test_a_tagger_fine_tune_refuses_a_beam_before_training(tmp_path, pairs_file):
    proc = run_cli("finetune", "--task", "translate", "--head", "tag", "--data", pairs_file, "--out", tmp_path / "o",
                   "--beam-size", "2", check=False)
    assert_clean_error(proc, "the run is a tagger", "takes no beam size", "leave them out")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch, head, expect", [("seq2seq", "tag", "--head tag tags with an encoder"),
                                               ("encoder", "beam", "unknown translate head 'beam'")])
def test_tag_head_needs_an_encoder(tmp_path, pairs_file, arch, head, expect):
    with pytest.raises(CandorError, match=expect):
        finetune(None, task="translate", data=str(pairs_file), out=tmp_path / "o", arch=arch, head=head,
                 overrides=TINY, **FAST)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_tagger_trains_evaluates_and_predicts(tmp_path, pairs_file):
    out = tmp_path / "tag"
    result = finetune(None, task="translate", data=str(pairs_file), out=out, head="tag", overrides=TINY, epochs=3,
                      lr=3e-3, **FAST)  # no --arch: the tag head's default is the encoder
    info = json.loads((out / "task.json").read_text(encoding="utf-8"))
    assert info["head"] == "tag" and (out / "source_tokenizer.json").is_file()
    assert result["model"]["arch"] == "encoder" and result["model"]["decoding"].startswith("tagger + 3-gram LM")
    assert result["models"][-1]["decoding"].startswith("tagging")  # the tagger alone, in the same table
    assert "greedy" not in result  # nothing is searched
    for key in ("char_accuracy", "han_char_accuracy", "chrf", "bleu"):
        assert key in result["model"] and key in result["baseline"]
    # one character per source token, each among that token's candidates
    assert result["model"]["char_accuracy"] > 0.3
    for ex in result["examples"]:
        tokens = ex["source"].split()
        assert len(ex["output"]) == len(tokens)
        assert all(ch in info["lexicon"][t] for t, ch in zip(tokens, ex["output"]) if t in info["lexicon"])
    again = evaluate_task(out, "translate", limit=5)
    assert again["split"]["test"] == 5 and again["examples"] == result["examples"][:5]

    model = candorlm.load_task(out)
    with pytest.raises(CandorError, match="is a tagger .* takes no beam size or length penalty"):
        model.predict(["zhong guo"], beam_size=4)  # it would be ignored: the LM's beam was chosen on dev
    for command in (["predict", out, "--input", "zhong guo"], ["eval", out, "--task", "translate"]):
        assert_clean_error(run_cli(*command, "--beam-size", "2", check=False), "is a tagger", "leave them out")
    got = model.predict(["zhong guo", {"source": "zhong ★ guo"}])
    assert [len(o["translation"]) for o in got] == [2, 3]
    assert got[1]["translation"][1] == "★"  # an unseen character is copied
    long = model.predict([" ".join(["zhong guo"] * 60)])[0]["translation"]  # longer than the model reads: in pieces
    assert len(long) == 120
    proc = run_cli("predict", out, "--input", "zhong guo ren min")
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["input"] == "zhong guo ren min" and len(line["translation"]) == 4


def test_the_tagger_batches_by_length_and_the_seq2seq_keeps_its_plain_order(pairs_file):
    """Both through finetune's one mechanism (example_length -> length_batches)."""
    import numpy as np

    from candorlm.tasks import translate
    from candorlm.tasks.base import load_base
    from candorlm.tasks.finetune import example_lengths, length_batches

    tagger = translate.prepare(load_base(None, arch="encoder", overrides=TINY), str(pairs_file), head="tag")
    lengths = example_lengths(translate, tagger.train)
    assert lengths == [len(e.ids) for e in tagger.train]
    n, rng = len(lengths), np.random.default_rng(0)
    batches = length_batches(rng.permutation(n), lengths, 16, rng)
    assert sorted(int(i) for b in batches for i in b) == list(range(n))  # every example once an epoch
    spread = [int(np.ptp([lengths[i] for i in b])) for b in batches]
    plain = [int(np.ptp([lengths[i] for i in b])) for b in length_batches(rng.permutation(n), None, 16, rng)]
    assert max(spread) <= 10 and sum(spread) < sum(plain) / 4  # a random batch spans most of 1..64

    seq2seq = translate.prepare(load_base(None, arch="seq2seq", overrides=TINY), str(pairs_file), head="generate")
    assert example_lengths(translate, seq2seq.train) is None
    rng, same = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(2):  # epochs: the permutation cut in slices, as before batches were grouped, the rng alike
        order = same.permutation(len(seq2seq.train))
        expected = [order[i:i + 16] for i in range(0, len(order), 16)]
        got = length_batches(rng.permutation(len(seq2seq.train)), None, 16, rng)
        assert [b.tolist() for b in got] == [b.tolist() for b in expected]
