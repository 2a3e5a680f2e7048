"""The three model families built from one block: encoder (BERT), encoder-decoder (Transformer),
classifier heads; masking, beam search, and pretraining each architecture with the trunk's loop."""

import functools
import itertools
import json
import math

import pytest
import torch

from candorlm.beam import DecoderSession, Seq2SeqSession, beam_search, greedy_search
from candorlm.config import ModelConfig
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.model import DecoderLM, EncoderLM, Seq2SeqLM, SequenceClassifier, build_model, lm_loss
from candorlm.tokenizer import Tokenizer
from candorlm.pretrain import train
from candorlm.training.objectives import corrupt_spans, mask_tokens
from tests.conftest import TINY_MODEL, TINY_TRAIN


def cfg(**kw):
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def all_grads_finite(model):
    return all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"mlp": "gelu"}, {"tie_embeddings": False}])
def test_encoder_forward_backward(kw):
    torch.manual_seed(0)
    m = EncoderLM(cfg(arch="encoder", **kw))
    x = torch.randint(0, 97, (3, 16))
    logits = m(x, torch.ones_like(x))
    assert logits.shape == (3, 16, 97)
    lm_loss(logits, x).backward()
    assert all_grads_finite(m)


@pytest.mark.parametrize("kw", [{}, {"src_vocab_size": 41, "n_encoder_layers": 3}, {"n_kv_heads": 1},
                                {"tie_embeddings": False, "src_vocab_size": 41}])
def test_seq2seq_forward_backward(kw):
    torch.manual_seed(0)
    m = Seq2SeqLM(cfg(arch="seq2seq", **kw))
    src = torch.randint(0, kw.get("src_vocab_size") or 97, (3, 11))
    tgt = torch.randint(0, 97, (3, 9))
    logits = m(src, tgt, attention_mask=torch.ones_like(src))
    assert logits.shape == (3, 9, 97)
    lm_loss(logits, tgt).backward()
    assert all_grads_finite(m)
    assert (m.encoder.tok_emb is m.tok_emb) == ("src_vocab_size" not in kw)
    assert len(m.encoder.blocks) == kw.get("n_encoder_layers", 2)


@pytest.mark.parametrize("arch,pooling", [("decoder", "last"), ("encoder", "mean")])
def test_classifier_forward_backward_and_padding(arch, pooling):
    torch.manual_seed(0)
    m = SequenceClassifier(build_model(cfg(arch=arch)), 3, pooling).eval()
    x = torch.randint(10, 97, (1, 9))
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 4)], 1).long()
    with torch.no_grad():
        assert torch.allclose(m(x, torch.ones_like(x)), m(padded, mask), atol=1e-5)  # padding changes nothing
    m.train()
    torch.nn.functional.cross_entropy(m(padded, mask), torch.tensor([2])).backward()
    assert all_grads_finite(m)


def test_encoder_is_bidirectional_and_ignores_padding():
    torch.manual_seed(0)
    m = EncoderLM(cfg(arch="encoder")).eval()
    x = torch.randint(10, 97, (1, 12))
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % 97
    with torch.no_grad():
        a, b = m(x), m(y)
        assert not torch.allclose(a[0, :5], b[0, :5])  # earlier positions see a later change
        padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], 1)
        mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 5)], 1).long()
        assert torch.allclose(m(x), m(padded, mask)[:, :12], atol=1e-5)


def test_seq2seq_decoder_is_causal_and_reads_the_source():
    torch.manual_seed(0)
    m = Seq2SeqLM(cfg(arch="seq2seq")).eval()
    src = torch.randint(10, 97, (1, 8))
    tgt = torch.randint(10, 97, (1, 10))
    with torch.no_grad():
        base = m(src, tgt)
        later = tgt.clone()
        later[0, 7] = (later[0, 7] + 1) % 97
        assert torch.allclose(base[0, :7], m(src, later)[0, :7], atol=1e-6)
        other = src.clone()
        other[0, 0] = (other[0, 0] + 1) % 97
        assert not torch.allclose(base[0, 0], m(other, tgt)[0, 0])
        padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
        mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 3)], 1).long()
        assert torch.allclose(base, m(padded, tgt, attention_mask=mask), atol=1e-5)


@pytest.mark.parametrize("cross_rope", [True, False])
def test_seq2seq_kv_cache_matches_teacher_forcing(cross_rope):
    torch.manual_seed(0)
    m = Seq2SeqLM(cfg(arch="seq2seq", n_kv_heads=2, cross_attention_rope=cross_rope)).eval()
    src = torch.randint(10, 97, (2, 8))
    tgt = torch.randint(10, 97, (2, 12))
    with torch.no_grad():
        full = m(src, tgt)
        memory = m.encode(src)
        cache = m.make_cache(2, 12)
        steps = [m.decode(tgt[:, t:t + 1], memory, cache=cache) for t in range(12)]
    assert set(cache.memory) == {0, 1}  # cross-attention keys/values computed once per layer
    assert torch.allclose(full, torch.cat(steps, 1), atol=1e-5)


def _aligned_task_loss(cross_rope: bool, steps: int = 120) -> float:
    """Final training loss on a monotone task: each target token is a fixed function of the
    source token at the same position (pinyin to characters in miniature)."""
    torch.manual_seed(0)
    m = Seq2SeqLM(cfg(arch="seq2seq", vocab_size=40, d_model=64, cross_attention_rope=cross_rope))
    table = torch.randperm(30) + 10
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        src = torch.randint(0, 30, (32, 12), generator=g)
        tgt = table[src]
        dec_in = torch.cat([torch.ones(32, 1, dtype=torch.long), tgt[:, :-1]], 1)
        loss = lm_loss(m(src + 10, dec_in), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.mark.slow
def test_cross_attention_rope_lets_the_decoder_find_its_source_position():
    # The encoder sees only relative positions, so without rotary cross-attention the decoder
    # cannot tell which source token it is at; with it, the aligned task is learned.
    with_rope, without = _aligned_task_loss(True), _aligned_task_loss(False)
    assert with_rope < 0.5 < without, (with_rope, without)


def test_build_model_picks_the_family():
    assert isinstance(build_model(cfg()), DecoderLM)
    assert isinstance(build_model(cfg(arch="encoder")), EncoderLM)
    assert isinstance(build_model(cfg(arch="seq2seq")), Seq2SeqLM)


# ---------------------------------------------------------------- masking


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return Tokenizer.load(data_dir / "tokenizer.json")


def test_mlm_masking_rates_and_targets(tokenizer):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, tokenizer.vocab_size, (64, 256))
    ids[:, 0], ids[:, -1] = tokenizer.bos_id, tokenizer.eos_id
    inputs, targets = mask_tokens(ids, tokenizer, g)
    chosen = targets != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens are never chosen
    assert torch.equal(targets[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes
    masked = (inputs[chosen] == tokenizer.mask_id).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # ...and about 10% random tokens
    again = mask_tokens(ids, tokenizer, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs)  # the same seed masks the same way (exact resume)
    assert not torch.equal(mask_tokens(ids, tokenizer, torch.Generator().manual_seed(1))[0], inputs)  # dynamic


def test_mlm_masks_at_least_one_token_per_row(tokenizer):
    ids = torch.tensor([[tokenizer.bos_id, 50, 51, tokenizer.eos_id]] * 8)
    _, targets = mask_tokens(ids, tokenizer, torch.Generator().manual_seed(0))
    assert ((targets != -100).sum(1) >= 1).all()


def test_span_corruption_shortens_sources(tokenizer):
    ids = torch.randint(10, tokenizer.vocab_size, (8, 64))
    source, mask = corrupt_spans(ids, tokenizer, torch.Generator().manual_seed(0))
    lengths = mask.sum(1)
    assert (lengths < 64).all() and (source == tokenizer.mask_id).any(1).all()
    assert (source[mask == 0] == tokenizer.pad_id).all()


# ---------------------------------------------------------------- decoding


def lively(arch, **kw):
    # A larger init spread gives a random model peaked, varied next-token distributions.
    torch.manual_seed(3)
    return build_model(cfg(**{**dict(arch=arch, init_std=0.3, vocab_size=23, max_seq_len=40, tie_embeddings=False),
                              **kw})).eval()


def test_beam_size_one_is_greedy_seq2seq():
    m = lively("seq2seq", src_vocab_size=19)
    sources = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    greedy = greedy_search(Seq2SeqSession(m, sources, bos_id=1, pad_id=0, max_new_tokens=15), eos_id=2,
                           max_new_tokens=15)
    beam = beam_search(Seq2SeqSession(m, sources, bos_id=1, pad_id=0, max_new_tokens=15), beam_size=1, eos_id=2,
                       max_new_tokens=15, length_penalty=1.0)
    assert beam == greedy
    assert len({tuple(g) for g in greedy}) > 1 and any(len(set(g)) > 2 for g in greedy)  # not a degenerate model
    # ...and greedy with the cache equals greedy recomputing everything from scratch
    for src, out in zip(sources, greedy):
        ids = [1]
        with torch.no_grad():
            memory = m.encode(torch.tensor([src]))
            for _ in range(15):
                nxt = int(m.decode(torch.tensor([ids]), memory)[0, -1].argmax())
                if nxt == 2:
                    break
                ids.append(nxt)
        assert ids[1:] == out


def test_beam_size_one_is_greedy_decoder():
    m = lively("decoder")
    prompts = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 8]]
    reference = generate_ids(m, prompts, SamplingConfig(max_new_tokens=12, greedy=True), stop_ids=[2], pad_id=0)
    reference = [r[:-1] if r and r[-1] == 2 else r for r in reference]
    beam = beam_search(DecoderSession(m, prompts, pad_id=0, max_new_tokens=12), beam_size=1, eos_id=2,
                       max_new_tokens=12)
    assert beam == reference


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_exhaustive_beam_finds_the_best_sequence(length_penalty):
    # With as many beams as there are prefixes, beam search is exhaustive: compare with brute force.
    m = lively("seq2seq", vocab_size=5, max_seq_len=8)
    src, eos, steps = [3, 4, 3], 2, 3
    with torch.no_grad():
        memory = m.encode(torch.tensor([src]))

        @functools.lru_cache(maxsize=None)
        def logp_of(prefix):
            return m.decode(torch.tensor([[1, *prefix]]), memory)[0, -1].float().log_softmax(-1)

        def logp(prefix):
            return logp_of(tuple(prefix))

        best, best_seq = -math.inf, None
        for n in range(1, steps + 1):
            for seq in itertools.product([t for t in range(5) if t != eos], repeat=n - 1):
                total = sum(float(logp(list(seq[:i]))[seq[i]]) for i in range(n - 1))
                ended = total + float(logp(list(seq))[eos])
                if ended / n ** length_penalty > best:
                    best, best_seq = ended / n ** length_penalty, list(seq)
            if n == steps:  # sequences cut at the budget count as ended, without <|eos|>
                for seq in itertools.product([t for t in range(5) if t != eos], repeat=n):
                    total = sum(float(logp(list(seq[:i]))[seq[i]]) for i in range(n))
                    if total / n ** length_penalty > best:
                        best, best_seq = total / n ** length_penalty, list(seq)
    K = 4 ** steps
    out = beam_search(Seq2SeqSession(m, [src], bos_id=1, pad_id=0, max_new_tokens=steps, expand=K), beam_size=K,
                      eos_id=eos, max_new_tokens=steps, length_penalty=length_penalty)
    assert out == [best_seq]


# ---------------------------------------------------------------- pretraining with the shared loop


@pytest.mark.parametrize("arch", ["encoder", "seq2seq"])
@pytest.mark.slow
def test_pretraining_each_architecture(tmp_path, data_dir, arch):
    run = tmp_path / arch
    result = train(run, data=data_dir, model=dict(TINY_MODEL, arch=arch), max_steps=16,
                   **dict(TINY_TRAIN, eval_every=2, save_every=16))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]  # the same masked positions at every evaluation
    assert val[-1] < val[0] - 0.2, val
    assert "arch = \"%s\"" % arch in (run / "config.toml").read_text()
    assert math.isfinite(result.final_eval["bpb"])


@pytest.mark.slow
def test_encoder_resume_is_exact(tmp_path, data_dir):
    # Dynamic masking is seeded by the step, so an interrupted and resumed run masks the same tokens.
    from candorlm.checkpoint.retention import list_checkpoints
    import shutil

    settings = dict(TINY_TRAIN, keep_checkpoints=9)
    model = dict(TINY_MODEL, arch="encoder")
    train(tmp_path / "full", data=data_dir, model=model, max_steps=8, **settings)
    train(tmp_path / "part", data=data_dir, model=model, max_steps=8, **settings)
    for ckpt in list_checkpoints(tmp_path / "part" / "checkpoints"):
        if ckpt.name != "step-000005":
            shutil.rmtree(ckpt)
    train(tmp_path / "part", data=data_dir, model=model, max_steps=8, resume=True, **settings)

    def losses(run):
        return [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "full") == losses(tmp_path / "part")
