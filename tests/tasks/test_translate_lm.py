"""The pinyin tagger's n-gram LM (candorlm.tasks.ngram, candorlm.tasks.translate_lm): a proper
distribution, fused into the tagger's decoding by a beam search; weight 0 is plain tagging; a
homophone that only the previous character settles is settled by the LM; a run without an LM
loads as before, a missing or damaged LM file fails in one line."""

import json

import numpy as np
import pytest
import torch

import candorlm
from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.model import EncoderLM, TokenTagger
from candorlm.tasks.data import Record
from candorlm.tasks.ngram import NgramLM
from candorlm.tasks.translate_lm import (
    DEAD,
    Channel,
    Lattice,
    beam_decode,
    build_lm,
    channel_counts,
    channel_lattice,
    channel_scores,
    choose,
    decode,
    load_lm,
    run_channel,
    tag_with_lm,
    tagger_lattice,
    with_channel,
)
from candorlm.tasks.translate_tag import make_lexicon, tag, vocabulary

SENTENCES = [[3, 4, 5, 6], [3, 4, 7], [5, 6, 5, 6, 4], [8], [4, 3, 4, 5, 6, 7, 8, 3]]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lm_is_a_distribution_over_the_vocabulary_for_any_history(order):
    lm = NgramLM.build(SENTENCES, order=order, vocab_size=10, bos=1, eos=2)
    for history in ([1, 1, 1], [1, 1, 3], [3, 4, 5], [9, 9, 9], [6, 5, 6], [], [4]):
        p = lm.distribution(history)
        assert p.shape == (10,) and (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-6)
    if order >= 2:  # what the counts say: after 3 comes 4 (four times of five), never 8
        after3 = lm.distribution([1, 1, 3])
        assert after3[4] > 0.5 and after3[4] > 10 * after3[8]


def test_lm_saves_without_pickle_and_loads_the_same(tmp_path):
    lm = NgramLM.build(SENTENCES, order=3, vocab_size=10, bos=1, eos=2)
    lm.save(tmp_path / "lm.safetensors")
    assert (tmp_path / "lm.safetensors").read_bytes()[8:9] == b"{"  # a safetensors JSON header, no pickle
    again = NgramLM.load(tmp_path / "lm.safetensors")
    hist, ids = np.array([[1, 1], [3, 4], [9, 9]]), np.array([3, 5, 4])
    np.testing.assert_array_equal(lm.prob(hist, ids), again.prob(hist, ids))


def test_damaged_or_foreign_lm_file_fails_in_one_line(tmp_path):
    bad = tmp_path / "lm.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CandorError, match="is not a candorlm n-gram model") as e:
        NgramLM.load(bad)
    assert "\n" not in str(e.value)
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, dtype=np.float32)}, str(bad))
    with pytest.raises(CandorError, match="is not a candorlm n-gram model"):
        NgramLM.load(bad)
    with pytest.raises(CandorError, match="cannot read"):
        NgramLM.load(tmp_path / "missing.safetensors")
    with pytest.raises(CandorError, match="ngram.safetensors is missing"):
        load_lm(tmp_path, {"lm": {"file": "ngram.safetensors", "weight": 0.5, "beam": 4}})
    assert load_lm(tmp_path, {}) is None  # a run without an LM: nothing to load


# ---------------------------------------------------------------- a toy input method

# shi is 是 after 就 and 事 after 办: only the previous character tells; 是 is more frequent overall
TOY = [("jiu shi", "就是"), ("ban shi", "办事"), ("jiu shi ta", "就是他"), ("ta jiu shi", "他就是"), ("ban shi ta", "办事他"),
       ("jiu shi", "就是")]


def _toy():
    records = [Record({"source": s, "target": t}, f"toy:{i}") for i, (s, t) in enumerate(TOY)]
    src = vocabulary((tok for r in records for tok in r["source"].split()), characters=False)
    tgt = vocabulary((ch for r in records for ch in r["target"]), characters=True)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder", vocab_size=src.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    return records, src, tgt, TokenTagger(EncoderLM(cfg), tgt.vocab_size).eval()


def test_fusion_with_weight_zero_is_plain_tagging():
    records, src, tgt, tagger = _toy()
    lexicon = make_lexicon(records)
    sources = [r["source"] for r in records] + ["ta ban shi jiu shi ta", "shi ★ shi"]
    lm = build_lm(records, tgt)
    lat = tagger_lattice(tagger, src, tgt, sources, lexicon)
    plain = tag(tagger, src, tgt, sources, lexicon)
    for beam in (1, 4):
        assert lat.texts(beam_decode(lat, lm, 0.0, beam), tgt) == plain
    assert tag_with_lm(tagger, src, tgt, sources, {"lexicon": lexicon, "lm": {"weight": 0.0, "beam": 4}}, lm) == plain
    assert tag_with_lm(tagger, src, tgt, sources, {"lexicon": lexicon}, None) == plain


def test_lm_settles_a_homophone_that_only_the_previous_character_tells():
    records, src, tgt, tagger = _toy()
    lexicon = make_lexicon(records)
    with torch.no_grad():  # a weak tagger: shi is 是 whatever comes before (the more frequent reading)
        tagger.head.weight.zero_()
        tagger.head.bias.zero_()
        tagger.head.bias[tgt.token_id("是")] = 1.0
    sources = ["ban shi", "jiu shi", "ta ban shi"]
    assert tag(tagger, src, tgt, sources, lexicon) == ["办是", "就是", "他办是"]  # the tagger alone: wrong after 办
    lm = build_lm(records, tgt)
    lat = tagger_lattice(tagger, src, tgt, sources, lexicon)
    assert decode(lat, tgt, lm, 1.0, beam=4) == ["办事", "就是", "他办事"]
    info = {"lexicon": lexicon, "lm": {"weight": 1.0, "beam": 4}}
    assert tag_with_lm(tagger, src, tgt, sources, info, lm) == ["办事", "就是", "他办事"]
    # the LM and the dictionary alone (the HMM baseline) read it the same way; an unseen character is copied
    hmm = channel_lattice(records, tgt, sources + ["ban ★"])
    assert decode(hmm, tgt, lm, 1.0, beam=4) == ["办事", "就是", "他办事", "办★"]


def test_channel_term_is_log_p_syllable_given_character_and_settles_a_rare_reading():
    # 行 reads xing (3 times) and hang (once); 航 reads only hang (once). The tagger cannot tell
    # hang's two characters apart; the counts can: p(hang | 航) = 1 > p(hang | 行) = 1/4.
    records = [Record({"source": s, "target": t}, f"toy:{i}") for i, (s, t) in
               enumerate([("xing", "行"), ("xing", "行"), ("xing", "行"), ("hang", "行"), ("hang", "航")])]
    tgt = vocabulary((ch for r in records for ch in r["target"]), characters=True)
    counts = channel_counts(records)
    assert counts == {"hang": {"行": 1, "航": 1}, "xing": {"行": 3}}
    xing, hang = tgt.token_id("行"), tgt.token_id("航")
    lat = Lattice(np.array([[[xing, hang]], [[xing, hang]]]), np.log(np.array([[[0.5, 0.5]], [[0.9, 0.1]]])),
                  np.array([1, 1]))
    ch = channel_scores(lat, ["hang", "zzz"], counts, tgt)
    np.testing.assert_allclose(ch[0, 0], np.log([1.1 / 5, 1.1 / 2]))  # (n + 0.1) / (count(character) + 1)
    assert (ch[1] == 0).all()  # a syllable the counts never saw: no evidence either way
    assert decode(lat, tgt, None, 0.0) == ["行", "行"]
    assert decode(with_channel(lat, ch, 1.0), tgt, None, 0.0) == ["航", "行"]
    assert with_channel(lat, ch, 0.0) is lat
    # a dead candidate stays dead, and a fixed (copied) position gets no channel score
    lat.scores[0, 0, 1] = DEAD
    lat.fixed[(0, 0)] = "行"
    assert (channel_scores(lat, ["hang", "zzz"], counts, tgt) == 0).all()


def test_channel_built_once_scores_as_the_per_syllable_rows_would():
    # the run's Channel (built once at load) against the definition, position by position: a read
    # character gets (n + 0.1) / (count(c) + 1), any other class 0.1 / (count(c) + 1), and a syllable
    # whose characters are none of the classes (炸, not in the tagger's vocabulary) only the latter
    records = [Record({"source": s, "target": t}, f"toy:{i}") for i, (s, t) in
               enumerate([("xing", "行"), ("xing", "行"), ("xing", "行"), ("hang", "行"), ("hang", "航"), ("yin", "银")])]
    tgt = vocabulary((ch for r in records for ch in r["target"]), characters=True)
    counts = {**channel_counts(records), "zha": {"炸": 2}}
    per_char = {"行": 4, "航": 1, "银": 1, "炸": 2}
    ids = [tgt.token_id(c) for c in "行航银"]
    rng = np.random.default_rng(0)
    sources = ["xing hang zha", "yin hang xing"]
    lat = Lattice(np.array([[rng.permutation(ids) for _ in range(3)] for _ in sources]),
                  np.zeros((2, 3, 3)), np.array([3, 3]))
    got = Channel(counts, tgt).scores(lat, sources)
    for i, text in enumerate(sources):
        for t, token in enumerate(text.split()):
            for k, cid in enumerate(lat.ids[i, t]):
                ch = tgt.hf.id_to_token(int(cid))
                n = counts[token].get(ch, 0)
                assert got[i, t, k] == pytest.approx(np.log((n + 0.1 if n else 0.1) / (per_char[ch] + 1)))
    np.testing.assert_array_equal(got, channel_scores(lat, sources, counts, tgt))
    assert run_channel({"lm": {"weight": 1.0, "channel": 0.0}}, tgt) is None  # no channel term: nothing built


def test_choose_picks_the_channel_weight_on_dev_and_a_run_keeps_it(tmp_path):
    records, src, tgt, tagger = _toy()
    lexicon = make_lexicon(records)
    sources, refs = [r["source"] for r in records], [r["target"] for r in records]
    lm = build_lm(records, tgt)
    lat = tagger_lattice(tagger, src, tgt, sources, lexicon)
    counts = channel_counts(records)
    exact = lambda hyps, refs: float(np.mean([h == r for h, r in zip(hyps, refs)]))
    chosen = choose(lat, refs, tgt, lm, exact, channel_scores(lat, sources, counts, tgt))
    assert chosen["channel"] in (0.0, 1.0) and any("channel 1" in k for k in chosen["dev"])
    assert chosen["dev_char_accuracy"] >= chosen["dev_tagger_alone"]
    assert "channel 1" not in " ".join(choose(lat, refs, tgt, lm, exact)["dev"])  # no channel given: none tried
    # in a run: tag_with_lm applies the stored weight and counts, as choose scored them
    entry = {"weight": 1.0, "beam": 4, "channel": 1.0, "channel_counts": counts}
    want = decode(with_channel(lat, channel_scores(lat, sources, counts, tgt), 1.0), tgt, lm, 1.0, 4)
    assert tag_with_lm(tagger, src, tgt, sources, {"lexicon": lexicon, "lm": entry}, lm) == want
    channel = run_channel({"lm": entry}, tgt)  # what load_task keeps: the same output, built once
    assert tag_with_lm(tagger, src, tgt, sources, {"lexicon": lexicon, "lm": entry}, lm, channel) == want
    # a channel weight without its counts (a hand-edited task.json): refused in one line
    with pytest.raises(CandorError, match="channel weight but no channel counts"):
        load_lm(tmp_path, {"lm": {"file": "ngram.safetensors", "weight": 1.0, "beam": 4, "channel": 1.0}})


def test_beam_search_finds_the_best_path_of_a_small_lattice():
    # 3 positions x 3 candidates, a bigram LM: the beam's answer is the exhaustive search's
    rng = np.random.default_rng(0)
    lm = NgramLM.build(rng.integers(3, 9, size=(30, 6)).tolist(), order=2, vocab_size=10, bos=1, eos=2)
    ids = rng.integers(3, 9, size=(1, 3, 3))
    scores = np.log(rng.dirichlet(np.ones(3), size=(1, 3)))
    lat = Lattice(ids, scores, np.array([3]))
    best, best_path = -np.inf, None
    for path in np.ndindex(3, 3, 3):
        chars = [ids[0, t, k] for t, k in enumerate(path)]
        hist = [1] + chars
        s = sum(scores[0, t, k] for t, k in enumerate(path))
        s += 0.7 * sum(lm.logprob(np.array([hist[t]]), np.array([hist[t + 1]]))[0] for t in range(3))
        s += 0.7 * lm.logprob(np.array([chars[-1]]), np.array([2]))[0]
        if s > best:
            best, best_path = s, list(path)
    assert beam_decode(lat, lm, 0.7, beam=3)[0].tolist() == best_path


# ---------------------------------------------------------------- in a run


@pytest.mark.slow
def test_tagger_run_keeps_its_lm_and_a_run_without_one_takes_one_later(tmp_path, pairs_file):
    from candorlm.io.manifest import update_manifest
    from candorlm.tasks import evaluate_task, finetune
    from candorlm.tasks.translate import attach_lm
    from tests.conftest import assert_clean_error, run_cli

    out = tmp_path / "tag"
    result = finetune(None, task="translate", data=str(pairs_file), out=out, head="tag", epochs=2, lr=3e-3,
                      batch_size=16, threads=1, precision="fp32",
                      overrides=["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=96"])
    info = json.loads((out / "task.json").read_text(encoding="utf-8"))
    lm_entry = info["lm"]
    assert lm_entry["file"] == "ngram.safetensors" and lm_entry["order"] == 3 and lm_entry["beam"] in (1, 16, 32)
    assert 0 < lm_entry["bytes"] < 10_000_000 and "weight 0" in lm_entry["dev"]
    # one table: the fused model (if dev chose a weight), the tagger alone, the HMM and the most frequent character
    names = [m["name"] for m in result["models"]]
    assert names[-1] == "tag (tagger alone)" and set(result["baselines"]) == {"most_frequent", "hmm"}
    assert result["baselines"]["hmm"]["char_accuracy"] > result["baselines"]["most_frequent"]["char_accuracy"]
    fused = candorlm.load_task(out).predict(["zhong guo ren min"])[0]["translation"]
    assert len(fused) == 4

    # a run from before the LM: no "lm" entry, no file; it loads, tags, and is evaluated without a fused row
    (out / "ngram.safetensors").unlink()
    (out / "task.json").write_text(json.dumps({k: v for k, v in info.items() if k != "lm"}), encoding="utf-8")
    update_manifest(out, [out / "task.json", out / "ngram.safetensors"])
    plain = candorlm.load_task(out)
    assert plain.lm is None and len(plain.predict(["zhong guo"])[0]["translation"]) == 2
    old = evaluate_task(out, "translate", limit=20)
    assert [m["name"] for m in old["models"]] == ["tag (tagger alone)"] and "hmm" in old["baselines"]

    entry = attach_lm(out)  # given one afterwards: counted, tuned on dev, the manifest updated
    assert entry["weight"] == lm_entry["weight"] and (out / "ngram.safetensors").is_file()
    again = candorlm.load_task(out)
    assert again.lm is not None and again.predict(["zhong guo ren min"])[0]["translation"] == fused
    assert (again.channel is not None) == bool(entry.get("channel"))  # built once at loading, when it has one

    (out / "ngram.safetensors").write_bytes(b"garbage")  # damaged: refused in one line, naming the file
    proc = run_cli("predict", out, "--input", "zhong guo", check=False)
    assert_clean_error(proc, "ngram.safetensors")
    update_manifest(out, [out / "ngram.safetensors"])
    with pytest.raises(CandorError, match="is not a candorlm n-gram model"):
        candorlm.load_task(out)
    (out / "ngram.safetensors").unlink()
    with pytest.raises(CandorError, match="ngram.safetensors is missing"):
        candorlm.load_task(out)


def test_lm_grid_scores_every_history_with_every_id_as_logprob_does():
    lm = NgramLM.build(SENTENCES, order=3, vocab_size=10, bos=1, eos=2)
    rng = np.random.default_rng(1)
    hist, ids = rng.integers(1, 10, size=(4, 3, 2)), rng.integers(0, 10, size=(4, 5))
    want = lm.logprob(np.broadcast_to(hist[:, :, None, :], (4, 3, 5, 2)), np.broadcast_to(ids[:, None, :], (4, 3, 5)))
    np.testing.assert_allclose(lm.grid(hist, ids), want)
