"""explain/ on the encoder (masked LM) and the encoder-decoder: hook points, attention maps
(cross-attention included), attributions with their completeness check, patching, the CLI."""

import json

import pytest
import torch

from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.explain import attention, attribution, faithfulness
from candorlm.explain.report import explain
from candorlm.explain.subject import load_subject
from candorlm.model import EncoderLM, Seq2SeqLM
from candorlm.model.hooks import compile_out_hook_points, hook_points, hooks, run_with_cache
from candorlm.pretrain import train
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

MASKED = "人民日<|mask|>记者"


def cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=61, d_model=32, n_layers=2, n_heads=2, max_seq_len=32), **kw})


@pytest.fixture(scope="module", params=["encoder", "seq2seq"])
def run(request, tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("explain-arch") / request.param
    train(out, data=data_dir, model=dict(TINY_MODEL, arch=request.param), max_steps=4,
          **dict(TINY_TRAIN, eval_every=100, save_every=100))
    return out


@pytest.fixture(scope="module")
def subject(run):
    return load_subject(run)


def test_hook_points_are_named_per_stack_and_change_nothing():
    torch.manual_seed(0)
    enc = EncoderLM(cfg(arch="encoder")).eval()
    s2s = Seq2SeqLM(cfg(arch="seq2seq", n_encoder_layers=3, n_kv_heads=1)).eval()
    assert {"hook_embed", "hook_norm", "blocks.1.attn.hook_pattern"} <= set(hook_points(enc))
    names = set(hook_points(s2s))
    assert {"encoder.hook_embed", "encoder.hook_norm", "encoder.blocks.2.hook_resid_post", "hook_embed", "hook_norm",
            "blocks.1.cross_attn.hook_pattern", "blocks.1.hook_resid_cross"} <= names
    src, dec = torch.randint(0, 61, (2, 9)), torch.randint(0, 61, (2, 5))
    for model, args in ((enc, (src,)), (s2s, (src, dec))):
        with torch.no_grad():
            plain = model(*args)
            cached, cache = run_with_cache(model, *args)  # every point, explicit attention included
            assert torch.allclose(plain, cached, atol=1e-5)
            assert len(cache) == len(hook_points(model))
            # The final norm's point is what the output layer reads.
            assert torch.allclose(model.lm_head(cache["hook_norm"]), plain, atol=1e-5)
    # Compiled out (no hook points at all), the same weights give the same outputs.
    for model, args in ((enc, (src,)), (s2s, (src, dec))):
        bare = compile_out_hook_points(type(model)(model.cfg).eval())
        bare.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert torch.equal(bare(*args), model(*args))
    with torch.no_grad():
        plain = s2s(src, dec)
        # Overwriting the encoder's embedding reaches the decoder's output through cross-attention;
        # the decoder's own embedding point is a different one.
        with hooks(s2s, {"encoder.hook_embed": lambda x, hook: torch.zeros_like(x)}):
            assert x_changed(s2s(src, dec), plain)
        with hooks(s2s, {"hook_embed": lambda x, hook: torch.zeros_like(x)}):
            assert x_changed(s2s(src, dec), plain)
            assert torch.equal(s2s.encode(src), bare.encode(src))


def x_changed(a, b):
    return not torch.allclose(a, b, atol=1e-4)


def test_attention_map_shapes_include_cross_attention():
    torch.manual_seed(0)
    s2s = Seq2SeqLM(cfg(arch="seq2seq", n_encoder_layers=3, n_heads=4)).eval()
    src, dec = torch.randint(0, 61, (1, 9)), torch.randint(0, 61, (1, 5))
    maps = attention.seq2seq_patterns(s2s, src, dec)
    assert maps["encoder"].shape == (3, 1, 4, 9, 9)
    assert maps["decoder"].shape == (2, 1, 4, 5, 5)
    assert maps["cross"].shape == (2, 1, 4, 5, 9)  # target queries x source keys
    for p in maps.values():
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-5)
    assert maps["decoder"][..., 0, 1:].abs().max() == 0  # causal
    assert maps["encoder"][..., 0, 1:].min() > 0  # bidirectional: the first token sees the rest
    enc = EncoderLM(cfg(arch="encoder")).eval()
    p = attention.attention_patterns(enc, src)
    assert p.shape == (2, 1, 2, 9, 9) and p[..., 0, 1:].min() > 0


@pytest.mark.slow
def test_integrated_gradients_are_complete(subject):
    prompt = MASKED if subject.arch == "encoder" else "人民日报记者"
    ex = subject.example(prompt)
    ig = attribution.integrated_gradients(subject.model, ex, subject.pad_id)
    assert ig.completeness_error < 0.05, ig
    assert abs(sum(ig.scores) - (ig.f_input - ig.f_baseline)) < 0.05 * abs(ig.f_input - ig.f_baseline)
    assert all(ig.scores[i] == 0.0 for i in ex.frame)  # <bos>, <|mask|>, <eos>: the same in the baseline
    assert len(ig.scores) == len(ex.ids)  # one per source token for the encoder-decoder
    with torch.no_grad():
        logits = subject.logits(torch.tensor([ex.ids]), ex)
    pos, tgt = ex.target_positions, ex.target_ids
    expected = torch.log_softmax(logits[0, pos].float(), -1)[torch.arange(len(tgt)), tgt].sum()
    assert ig.f_input == pytest.approx(float(expected), rel=1e-5)
    if subject.arch == "encoder":
        assert ex.ids[ex.masked[0]] == subject.target.mask_id and ex.masked == (ex.ids.index(subject.target.mask_id),)
    else:
        assert ex.decoder_ids[0] == subject.target.bos_id and len(ex.decoder_ids) == len(tgt)
    # Deletion removes content tokens only, wherever that moves the mask.
    d = faithfulness.deletion_test(subject.model, ex, ig.scores, 1, False, draws=20)
    assert d is not None and not set(d.removed) & set(ex.frame)


@pytest.mark.slow
def test_encoder_masks_are_placed_as_documented(subject):
    if subject.arch != "encoder":
        pytest.skip("encoder only: how the masked positions are marked")
    tok = subject.target
    appended = subject.example("人民日报", target="记者")
    n = len(appended.target_ids)
    assert appended.ids[-n:] == [tok.mask_id] * n and appended.masked == tuple(range(len(appended.ids) - n,
                                                                                      len(appended.ids)))
    two = subject.example("<|mask|>民日<|mask|>记者")
    assert len(two.masked) == 1 and two.masked[0] == [i for i, t in enumerate(two.ids) if t == tok.mask_id][-1]
    with pytest.raises(CandorError, match="one <\\|mask\\|> per target token"):
        subject.example(MASKED, target="人民日报记者")


def corruption(subject, prompt):
    """`prompt` with its first word changed, tokenized to the same length (and masks)."""
    clean = subject.example(prompt)
    for word in ["美国", "日本", "北京", "上海", "世界", "全国", "今天", "中国", "国", "美", "新"]:
        candidate = word + prompt[len(word):]
        bad = subject.example(candidate)
        if candidate != prompt and len(bad.ids) == len(clean.ids) and bad.masked == clean.masked:
            return candidate
    raise AssertionError(f"no same-length corruption of {prompt!r} in this vocabulary")


@pytest.mark.slow
def test_explain_writes_every_method_per_architecture(run, tmp_path):
    arch = "encoder" if run.name == "encoder" else "seq2seq"
    prompt = MASKED if arch == "encoder" else "人民日报记者"
    # The encoder runs every method; the encoder-decoder those its completeness test does not cover.
    target, method = (None, "all") if arch == "encoder" else ("记者", "attention,patching")
    doc = explain(run, prompt, target=target, method=method, corrupt=corruption(load_subject(run), prompt),
                  out=tmp_path)
    assert doc["arch"] == arch and (arch != "encoder" or doc["attribution"]["completeness_ok"])
    maps = {m["name"]: m for m in doc["attention"]["maps"]}
    T = len(doc["tokens"])
    if arch == "encoder":
        assert list(maps) == ["self"] and not maps["self"]["causal"]
        assert len(maps["self"]["patterns"][0][0]) == T
        assert doc["lens"]["positions"] == doc["tokens"]
        assert {"attention-layer-0.png", "head-scores.png", "patching-residual.png"} <= set(doc["files"])
        # The MLM head reads the final residual stream at the masked position only: restoring it there restores all.
        resid = doc["patching"]["residual"][0]
        assert resid["effect"][-1][doc["masked_positions"][0]] == pytest.approx(1.0, abs=1e-3)
    else:
        assert list(maps) == ["encoder", "decoder", "cross"]
        D = len(doc["decoder_tokens"])
        cross = maps["cross"]["patterns"]
        assert len(cross) == 2 and len(cross[0]) == 2 and len(cross[0][0]) == D and len(cross[0][0][0]) == T
        assert maps["cross"]["heads"] is None and maps["decoder"]["heads"] is not None
        assert {"attention-cross-layer-1.png", "head-scores-encoder.png", "patching-residual-encoder.png",
                "patching-residual-decoder.png", "patching-heads-cross.png"} <= set(doc["files"])
        streams = {r["name"]: r for r in doc["patching"]["residual"]}
        assert len(streams["encoder"]["columns"]) == T and len(streams["decoder"]["columns"]) == D
        assert max(map(abs, streams["decoder"]["effect"][0])) == 0  # the decoder's input is the same in both runs
        assert {h["name"] for h in doc["patching"]["heads"]} == {"encoder", "decoder", "cross"}
    html = (tmp_path / "explain.html").read_text(encoding="utf-8")
    assert "https://" not in html and "<script src" not in html


@pytest.mark.slow
def test_cli_explains_a_tiny_encoder_run(run, tmp_path):
    if run.name != "encoder":
        pytest.skip("the CLI check runs on the encoder")
    out = tmp_path / "out"
    proc = run_cli("explain", run, "--prompt", MASKED, "--method", "attention,lens", "--out", out)
    assert "previous-token heads:" in proc.stdout + proc.stderr
    assert {"attention-layer-0.png", "attention-layer-1.png", "head-scores.png", "lens.png", "explain.html",
            "explain.json"} <= {p.name for p in out.iterdir()}
    doc = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    assert doc["arch"] == "encoder" and doc["tokens"][doc["masked_positions"][0]] == "<|mask|>"
