"""Greedy tokens a chunk at a time (DecodeStep.greedy): the same tokens as one step at a time.

The fast tests swap torch.compile for the function itself, so the chunk path runs eagerly (the
very function inductor would compile, written-out attention included); one slow test compiles."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.exc import InductorError

from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.generate import SamplingConfig, generate_ids
from candorlm.model import DecoderLM
from candorlm.model import decode as decode_module
from candorlm.model.decode import _attend, decode_step

PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]  # left-padded: rows at different positions


def tiny(**kw: object) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=101, d_model=32, n_layers=2, n_heads=4, max_seq_len=64,
                                 init_std=0.2, **kw)).eval()  # large weights: varied tokens


def greedy(n: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, greedy=True)


@pytest.fixture
def compiled(monkeypatch):
    """"Compiling" returns the function itself, which then runs as inside a compiled graph."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(decode_module, "is_compiling", lambda: True)


def chunk_calls(model: DecoderLM, monkeypatch) -> list[int]:
    """The cache length at each chunk call of the model's step, recorded as they come."""
    step, calls = decode_step(model), []
    run = step.greedy

    def counted(token, slot, positions, key_ok, cache, banned):
        assert token.stride() == (1,)  # a strided token would make a compiled chunk compile anew
        calls.append(cache.length)
        return run(token, slot, positions, key_ok, cache, banned)

    monkeypatch.setattr(step, "greedy", counted)
    return calls


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "qk_norm": True}, {"mlp": "relu2"}])
@pytest.mark.parametrize("n", [1, 2, 8, 9, 20])  # the first token is the prompt's: 9 is one whole chunk
def test_chunks_make_the_tokens_one_step_at_a_time_makes(kw, n, compiled, monkeypatch):
    model = tiny(**kw)
    expected = generate_ids(model, PROMPTS, greedy(n), compile=False)
    calls = chunk_calls(model, monkeypatch)
    assert generate_ids(model, PROMPTS, greedy(n), compile=True) == expected
    assert calls == list(range(5, 5 + 8 * len(calls), 8))  # a chunk per 8 tokens, the prompt's 5 columns first
    assert len(calls) == (n - 1 + 7) // 8  # the last chunk's surplus dropped
    assert generate_ids(model, [PROMPTS[1]], greedy(n), compile=True) == expected[1:2]  # unpadded


def test_a_stop_token_inside_a_chunk_ends_its_row_there(compiled, monkeypatch):
    model = tiny()
    free = generate_ids(model, PROMPTS, greedy(20), compile=False)
    stop = free[0][4]  # row 0 stops at its 5th token, inside the first chunk (tokens 2-9)
    expected = generate_ids(model, PROMPTS, greedy(20), stop_ids=[stop], compile=False)
    assert expected[0] == free[0][:free[0].index(stop) + 1]
    calls = chunk_calls(model, monkeypatch)
    assert generate_ids(model, PROMPTS, greedy(20), stop_ids=[stop], compile=True) == expected
    assert calls  # chunks ran
    # Every row stopping inside the first chunk: the chunk's later tokens are dropped, no second one runs.
    stops = {row[3] for row in free}
    calls.clear()
    out = generate_ids(model, PROMPTS, greedy(20), stop_ids=stops, compile=True)
    assert out == generate_ids(model, PROMPTS, greedy(20), stop_ids=stops, compile=False)
    assert all(len(row) <= 4 for row in out) and calls == [5]


def test_suppressed_tokens_stay_out_of_chunks(compiled):
    model = tiny()
    free = generate_ids(model, PROMPTS, greedy(20), compile=False)
    suppress = sorted({free[0][2], free[1][5], free[2][9]})
    expected = generate_ids(model, PROMPTS, greedy(20), suppress_ids=suppress, compile=False)
    assert expected != free and not set(suppress) & {t for row in expected for t in row}
    assert generate_ids(model, PROMPTS, greedy(20), suppress_ids=suppress, compile=True) == expected


def test_a_prompt_near_the_context_ends_one_step_at_a_time(compiled, monkeypatch):
    model = tiny()  # max_seq_len 64: the cache too
    prompt = [[(7 * i) % 97 + 3 for i in range(50)]]
    expected = generate_ids(model, prompt, greedy(14), compile=False)
    calls = chunk_calls(model, monkeypatch)
    assert generate_ids(model, prompt, greedy(14), compile=True) == expected
    assert calls == [50]  # 50..57 in a chunk; 58..62 one at a time (a second chunk would pass 64)


def test_sampling_and_penalties_go_one_step_at_a_time(compiled, monkeypatch):
    model = tiny()
    calls = chunk_calls(model, monkeypatch)
    for cfg in (SamplingConfig(max_new_tokens=12, temperature=0.8, seed=1),
                SamplingConfig(max_new_tokens=12, greedy=True, repetition_penalty=1.3),
                SamplingConfig(max_new_tokens=12, greedy=True, no_repeat_ngram=2)):
        assert generate_ids(model, PROMPTS, cfg, compile=True) == generate_ids(model, PROMPTS, cfg, compile=False)
    assert calls == []


def test_by_default_a_compiled_chunk_is_used_and_nothing_compiled_anew(compiled, monkeypatch):
    model = tiny()
    expected = generate_ids(model, PROMPTS, greedy(20), compile=False)
    calls = chunk_calls(model, monkeypatch)
    assert generate_ids(model, PROMPTS, greedy(20)) == expected
    assert calls == []  # nothing compiled yet: eager
    generate_ids(model, PROMPTS, greedy(20), compile=True)
    calls.clear()
    assert generate_ids(model, PROMPTS, greedy(20)) == expected
    assert len(calls) == 3  # compiled for this shape: used
    calls.clear()
    assert generate_ids(model, PROMPTS[:1], greedy(20)) == expected[:1]
    assert calls == []  # another shape (batch 1, no padding): not compiled, so eager


def test_a_chunk_that_fails_to_compile(monkeypatch, caplog):
    model = tiny()
    expected = generate_ids(model, PROMPTS, greedy(20), compile=False)

    def broken(fn, **kw):
        def fail(*a, **k):  # as inductor fails while compiling: wrapped, the cause's first line first
            raise InductorError(RuntimeError("no C compiler found\n(a long traceback)"), None)
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CandorError, match="^could not compile the decode step: RuntimeError: no C compiler found$"):
        generate_ids(model, PROMPTS, greedy(20), compile=True)
    monkeypatch.setattr("candorlm.generate.AUTO_COMPILE_AFTER", 0)  # compiling "pays" at once
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        assert generate_ids(model, PROMPTS, greedy(20)) == expected
        assert generate_ids(model, PROMPTS, greedy(20)) == expected  # not retried
    assert [r.getMessage() for r in caplog.records] == [
        "generation goes on without compiling: RuntimeError: no C compiler found"]


def test_a_chunk_that_reaches_the_cache_s_last_column_compiles_once(eager_dynamo):
    """Dynamo itself (its eager backend: no C++). A chunk's attention slices end at most at the cache's
    last column; a slice ending where the tensor ends made dynamo compile the chunk again there and
    fail (a ConstraintViolationError: compiling then switched off for the model)."""
    model = tiny()  # max_seq_len 64: the cache too
    prompt = [[(7 * i) % 97 + 3 for i in range(32)]]  # 32 + 32: chunks at 32, 40, 48 and 56 (up to column 63)
    expected = generate_ids(model, prompt, greedy(32), compile=False)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert generate_ids(model, prompt, greedy(32), compile=True) == expected
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1  # one graph, to the end


def test_weights_rewritten_between_generations_need_no_second_graph(eager_dynamo):
    """The concatenated weights are made anew after a write, by an evaluation call (no_grad) or by a
    generation (inference mode): the same kind of tensor either way, so the compiled chunk's
    guards still hold (an inference tensor where a plain one was would compile a second graph)."""
    model = tiny()
    generate_ids(model, PROMPTS, greedy(20), compile=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for evaluate_first in (True, False, True):
        with torch.no_grad():
            model.blocks[0].attn.q_proj.weight.mul_(0.9)
            model.blocks[1].mlp.up_proj.weight.mul_(1.1)
            if evaluate_first:
                model(torch.tensor([PROMPTS[0]]))
        expected = generate_ids(model, PROMPTS, greedy(20), compile=False)
        assert generate_ids(model, PROMPTS, greedy(20), compile=True) == expected
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
def test_written_out_attention_is_sdpa(heads):
    H, Hkv = heads
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, n, 16, generator=gen) for h, n in ((H, 1), (Hkv, 9), (Hkv, 9)))
    bias = torch.zeros(3, 1, 1, 9).masked_fill_(torch.rand(3, 1, 1, 9, generator=gen) < 0.3, float("-inf"))
    bias[..., -1] = 0  # a query always sees itself
    for mask in (None, bias):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
        torch.testing.assert_close(_attend(q, k, v, mask), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # compiles (a minute)
def test_compiled_chunks_make_the_tokens_one_step_at_a_time_makes(monkeypatch):
    monkeypatch.setattr(decode_module, "CHUNK", 3)  # a smaller graph: compiles faster
    model = tiny(n_kv_heads=2)
    expected = generate_ids(model, PROMPTS, greedy(20), compile=False)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert generate_ids(model, PROMPTS, greedy(20), compile=True) == expected
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1  # compiled once, not per call
    assert decode_step(model).greedy_shapes == {(3, 64, torch.float32, True, False, 3)}
    stop = expected[0][4]
    assert generate_ids(model, PROMPTS, greedy(20), stop_ids=[stop], compile=True) == \
        generate_ids(model, PROMPTS, greedy(20), stop_ids=[stop], compile=False)
