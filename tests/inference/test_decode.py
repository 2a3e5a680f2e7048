"""The decode step (model/decode.py) generates what the model's forward pass generates."""

import logging

import pytest
import torch

from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.generate import SamplingConfig, cache_length, generate_ids
from candorlm.model import DecoderLM
from candorlm.model.decode import KNOWN_SETTINGS, decode_step, supports
from candorlm.model.hooks import hooks

PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]  # left-padded: rows at different positions
GREEDY = SamplingConfig(max_new_tokens=20, greedy=True)


def tiny(**kw: object) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=101, d_model=32, n_layers=2, n_heads=4, max_seq_len=64,
                                 init_std=0.2, **kw)).eval()  # large weights: varied tokens


def through_forward(model: DecoderLM, prompts: list[list[int]], cfg: SamplingConfig) -> list[list[int]]:
    """Generation through the forward pass at every step: a hook attached keeps the decode step out."""
    calls: list[int] = []
    with hooks(model, {"hook_embed": lambda x, hook: calls.append(x.shape[1])}):
        out = generate_ids(model, prompts, cfg)
    assert len(calls) == cfg.max_new_tokens  # the prompt, then one call per later token
    return out


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"qk_norm": True}, {"mlp": "relu2"}, {"mlp": "gelu"}])
def test_decode_step_generates_what_the_forward_pass_does(kw):
    model = tiny(**kw)
    assert generate_ids(model, PROMPTS, GREEDY, compile=False) == through_forward(model, PROMPTS, GREEDY)
    sampled = SamplingConfig(max_new_tokens=20, temperature=1.1, top_k=30, repetition_penalty=1.2, seed=5)
    assert generate_ids(model, PROMPTS, sampled, compile=False) == through_forward(model, PROMPTS, sampled)


def test_the_decode_step_logits_match_the_forward_pass():
    model = tiny(n_kv_heads=2)
    ids = torch.tensor([[3, 9, 27, 81, 42, 17]])
    with torch.inference_mode():
        full = model(ids)[0, -1]
        step = decode_step(model)
        cache = step.make_cache(model, 1, 64)
        model(ids[:, :-1], cache=cache)
        step.prepare(model, cache)
        slot, positions = torch.tensor([5]), torch.tensor([5])
        logits = step(ids[:, -1], slot, positions, None, cache)[0]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)


def test_weights_changed_between_generations_are_used():
    model = tiny()
    before = generate_ids(model, PROMPTS, GREEDY, compile=False)
    with torch.no_grad():  # in place, as an optimizer step does: the fused q/k/v must follow
        model.blocks[0].attn.q_proj.weight.mul_(-3.0)
        model.blocks[1].mlp.up_proj.weight.mul_(5.0)
    after = generate_ids(model, PROMPTS, GREEDY, compile=False)
    assert after == through_forward(model, PROMPTS, GREEDY)
    assert after != before


def no_cxx() -> Exception:
    """What compiling raises without a working C++ compiler: inductor's InvalidCxxCompiler, wrapped (as
    everything that fails while inductor compiles) in an InductorError."""
    from torch._inductor.exc import InductorError, InvalidCxxCompiler

    return InductorError(InvalidCxxCompiler(), None)


def compiling_raises(monkeypatch, error: BaseException) -> None:
    """torch.compile returns a function that raises `error` (as a compiled call whose compiling, or
    whose running, fails)."""
    def fail(*a: object, **k: object) -> None:
        raise error
    monkeypatch.setattr(torch, "compile", lambda *a, **k: fail)


SAMPLED = SamplingConfig(max_new_tokens=20, temperature=0.9, seed=2)  # one token a step (GREEDY: chunks)


def test_explicit_compile_fails_loudly_where_it_cannot(monkeypatch):
    model = tiny()
    with hooks(model, {"hook_embed": lambda x, hook: None}), pytest.raises(CandorError, match="no hook attached"):
        generate_ids(model, PROMPTS, GREEDY, compile=True)
    compiling_raises(monkeypatch, no_cxx())
    for cfg in (GREEDY, SAMPLED):
        with pytest.raises(CandorError, match=r"^could not compile the decode step: InvalidCxxCompiler: No working "
                                              r"C\+\+ compiler found in torch._inductor.config.cpp.cxx: .*$"):
            generate_ids(model, PROMPTS, cfg, compile=True)


def compile_failures() -> list[Exception]:
    from torch._dynamo.exc import Unsupported, UserError, UserErrorType
    from torch._inductor.exc import CppCompileError, InductorError

    return [no_cxx(), InductorError(CppCompileError(["g++", "x.cpp"], "g++: internal compiler error"), None),
            Unsupported("call to an unsupported function"),
            UserError(UserErrorType.CONSTRAINT_VIOLATION, "a dynamic size made constant")]


@pytest.mark.parametrize("cfg", [GREEDY, SAMPLED], ids=["chunks", "steps"])
@pytest.mark.parametrize("failure", range(4), ids=["no C++ compiler", "C++ compiler fails", "unsupported", "user"])
def test_compiling_by_default_falls_back_to_eager_on_failure(monkeypatch, caplog, cfg, failure):
    model = tiny()
    expected = generate_ids(model, PROMPTS, cfg, compile=False)
    error = compile_failures()[failure]
    compiling_raises(monkeypatch, error)
    monkeypatch.setattr("candorlm.generate.AUTO_COMPILE_AFTER", 0)  # compiling "pays" at once
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        assert generate_ids(model, PROMPTS, cfg) == expected
        assert generate_ids(model, PROMPTS, cfg) == expected  # not retried: no second warning
    reason = str(error).strip().splitlines()[0]
    if failure == 1:  # a C++ build failure: the compiler's own words too (model/compiled.py's failure_reason)
        reason += ": g++: internal compiler error"
    assert [r.getMessage() for r in caplog.records] == [f"generation goes on without compiling: {reason}"]


@pytest.mark.parametrize("cfg", [GREEDY, SAMPLED], ids=["chunks", "steps"])
def test_a_compiled_graph_that_fails_later_falls_back_too(monkeypatch, caplog, cfg):
    """A graph compiled for a shape is compiled again where one of its guards fails, which can fail
    too: by default decoding goes on eagerly from that token, with the one warning."""
    from torch._dynamo.exc import Unsupported

    model = tiny()
    expected = generate_ids(model, PROMPTS, cfg, compile=False)
    calls: list[int] = []

    def flaky(fn, **kw):
        def run(*a, **k):
            calls.append(1)
            if len(calls) > 2:
                raise Unsupported("compiling again failed")
            return fn(*a, **k)
        return run

    monkeypatch.setattr(torch, "compile", flaky)
    monkeypatch.setattr("candorlm.generate.AUTO_COMPILE_AFTER", 0)
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        assert generate_ids(model, PROMPTS, cfg) == expected
    assert len(calls) == 3  # two compiled calls, the failing third, then eager
    assert [r.getMessage() for r in caplog.records] == ["generation goes on without compiling: compiling again failed"]


@pytest.mark.parametrize("cfg", [GREEDY, SAMPLED], ids=["chunks", "steps"])
@pytest.mark.parametrize("error", [ValueError("shapes (3, 32) and (64, 96) do not match"),
                                   torch.OutOfMemoryError("out of memory"), KeyboardInterrupt()],
                         ids=["shape error", "out of memory", "interrupt"])
def test_an_error_that_is_not_the_compilers_is_raised_as_it_is(monkeypatch, caplog, cfg, error):
    """Only torch.compile's own failures fall back to eager: a real error of the compiled call (a
    shape error, an out-of-memory, an interrupt) is raised by default as with compile=True."""
    model = tiny()
    compiling_raises(monkeypatch, error)
    monkeypatch.setattr("candorlm.generate.AUTO_COMPILE_AFTER", 0)
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        for compile in (None, True):
            with pytest.raises(type(error)) as raised:
                generate_ids(model, PROMPTS, cfg, compile=compile)
            assert raised.value is error
    assert decode_step(model).compile_error is None and not caplog.records  # compiling was not blamed


def test_cache_length_is_a_power_of_two_within_the_context():
    assert [cache_length(n, 512) for n in (1, 64, 65, 288, 512)] == [64, 64, 128, 512, 512]
    assert cache_length(300, 320) == 320


@pytest.mark.slow  # compiles (seconds to a minute)
def test_compiled_step_generates_what_the_forward_pass_does():
    # An n-gram ban reads the logits: one token a step (plain greedy comes in chunks, test_chunks.py).
    banning = SamplingConfig(max_new_tokens=20, greedy=True, no_repeat_ngram=2)
    model = tiny(n_kv_heads=2)
    expected = through_forward(model, PROMPTS, banning)
    assert generate_ids(model, PROMPTS, banning, compile=True) == expected
    step = decode_step(model)
    assert step.compiled_shapes == {(3, 64, torch.float32, True)}  # padded prompts
    # Compiled once for this shape: the default uses it from now on, without compiling again.
    assert generate_ids(model, PROMPTS, banning) == expected
    assert generate_ids(model, [PROMPTS[0]], banning, compile=False) == expected[:1]
    # A second model of another shape compiles its own graph (its head counts stay constants).
    other = tiny(n_kv_heads=1)  # another graph: one key/value head
    assert generate_ids(other, PROMPTS, banning, compile=True) == through_forward(other, PROMPTS, banning)


def test_a_setting_the_step_does_not_know_keeps_the_forward_pass(monkeypatch):
    model = tiny(qk_norm=True)
    assert supports(model)
    monkeypatch.setattr("candorlm.model.decode.KNOWN_SETTINGS", KNOWN_SETTINGS - {"qk_norm"})  # as a new lever would be
    assert not supports(model)
    assert supports(tiny())  # a setting at its default does not matter


def test_any_hook_keeps_the_forward_pass():
    model = tiny()
    with hooks(model, {"blocks.0.attn.hook_q": lambda x, hook: None}):
        assert not supports(model)
    handle = model.blocks[1].mlp.register_forward_hook(lambda module, args, out: None)
    assert not supports(model)
    handle.remove()
    assert supports(model)


def test_past_the_recompile_limit_new_shapes_decode_eagerly_and_say_so_once(eager_dynamo, monkeypatch, caplog, request):
    from candorlm.model import decode as decode_module

    monkeypatch.setattr(decode_module, "CHUNK", 2)  # a smaller chunk: traced faster
    monkeypatch.setattr(decode_module, "RECOMPILE_LIMIT", 1)
    # one graph per function; dynamo's own patch, as monkeypatch's undo deletes the config key, and
    # every later compile in the process then fails on the missing recompile_limit
    limit = torch._dynamo.config.patch(recompile_limit=1)
    limit.__enter__()
    request.addfinalizer(lambda: limit.__exit__(None, None, None))
    assert decode_module.recompile_limit() == 1
    model = tiny()
    a, b, c, d = PROMPTS, PROMPTS[:1], PROMPTS[1:], [[11, 12], [13, 14]]  # 4 shapes: batch 3, 1, 2 and 2 unpadded
    runs = [(a, SAMPLED, True), (c, GREEDY, None), (d, GREEDY, None), (c, SAMPLED, None), (d, GREEDY, None),
            (b, GREEDY, None), (a, SAMPLED, None), (c, GREEDY, None)]
    monkeypatch.setattr("candorlm.generate.AUTO_COMPILE_AFTER", 0)  # by default, compiling "pays" at once
    with caplog.at_level(logging.WARNING, logger="candorlm"):
        for i, (prompts, cfg, compile) in enumerate(runs):
            expected = generate_ids(model, prompts, cfg, compile=False)
            assert generate_ids(model, prompts, cfg, compile=compile) == expected
            if i == 0:  # the step's one graph is there: asked for another, it fails loudly
                with pytest.raises(CandorError, match=r"^could not compile the decode step: it has compiled as many "
                                                      r"shapes as torch allows \(1\): raise torch._dynamo.config"):
                    generate_ids(model, b, SAMPLED, compile=True)
    said = [r.getMessage() for r in caplog.records if r.name == "candorlm"]  # (dynamo logs its own too)
    assert said == [("the decode step has compiled as many shapes as torch allows (recompile limit 1): new shapes "
                     "decode without compiling; raise torch._dynamo.config.recompile_limit to compile more")]
    step = decode_step(model)
    assert step.compile_error is None  # the graphs there still serve their shapes (a's step, c's chunk)
    assert len(step.compiled_shapes) == 1 and len(step.greedy_shapes) == 1
