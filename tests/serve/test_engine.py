"""The continuous-batching engine: same tokens as one-at-a-time decoding, slots reused, cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from candorlm.generate import SamplingConfig, generate_ids
from candorlm.lm import LanguageModel
from candorlm.serve.engine import Engine, Job


@pytest.fixture(scope="module")
def lm(trained_run) -> LanguageModel:
    return LanguageModel.load(trained_run, device="cpu")


def prompts_of(lm: LanguageModel) -> list[list[int]]:
    texts = ["中国", "今天的天气", "经济发展和改革开放", "人民", "新年", "北京市", "我们要", "一九九八年"]
    return [lm.encode_prompt(t) for t in texts]


def reference(lm: LanguageModel, prompt: list[int], cfg: SamplingConfig, stop_ids) -> list[int]:
    banned = [i for i in lm.tokenizer.special_ids if i not in stop_ids]
    out = generate_ids(lm.model, [prompt], cfg, stop_ids=stop_ids, suppress_ids=banned, pad_id=lm.tokenizer.pad_id)[0]
    return out


@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_jobs_that_join_at_different_times_get_the_tokens_of_solo_greedy_decoding(lm, max_batch):
    engine = Engine(lm.model, lm.tokenizer, max_batch=max_batch).start()
    try:
        stop = frozenset({lm.tokenizer.eos_id})
        jobs = []
        for i, prompt in enumerate(prompts_of(lm)):
            cfg = SamplingConfig(max_new_tokens=8 + 3 * i, greedy=True)
            jobs.append(engine.submit(Job(prompt, cfg, stop)))
            time.sleep(0.003 * i)  # later jobs join a batch that is already decoding
        for job in jobs:
            job.result(timeout=60)
            assert job.tokens == reference(lm, job.prompt_ids, job.sampling, stop), job.prompt_ids
        assert engine.max_active_seen <= max_batch
        if max_batch > 1:
            assert engine.max_active_seen > 1  # they really shared decoding steps
    finally:
        engine.stop()


def test_sampling_with_a_seed_is_independent_of_the_batch(lm):
    stop = frozenset({lm.tokenizer.eos_id})
    cfg = dict(max_new_tokens=20, temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=5)
    prompt = prompts_of(lm)[2]
    solo = reference(lm, prompt, SamplingConfig(**cfg), stop)
    engine = Engine(lm.model, lm.tokenizer, max_batch=8).start()
    try:
        noise = [engine.submit(Job(p, SamplingConfig(max_new_tokens=30, temperature=1.5, seed=i), stop))
                 for i, p in enumerate(prompts_of(lm))]
        job = engine.submit(Job(prompt, SamplingConfig(**cfg), stop))
        job.result(timeout=60)
        for other in noise:
            other.result(timeout=60)
    finally:
        engine.stop()
    assert job.tokens == solo


def test_text_stop_strings_and_finish_reasons(lm):
    engine = Engine(lm.model, lm.tokenizer, max_batch=4).start()
    try:
        stop = frozenset({lm.tokenizer.eos_id})
        prompt = lm.encode_prompt("中国")
        full, event = engine.submit(Job(prompt, SamplingConfig(max_new_tokens=20, greedy=True), stop)).result(60)
        assert full == lm.generate("中国", max_new_tokens=20, greedy=True)
        assert event.finish_reason in ("length", "stop") and event.completion_tokens <= 20
        cut_at = full[4:6]
        text, event = engine.submit(Job(prompt, SamplingConfig(max_new_tokens=20, greedy=True), stop,
                                        (cut_at,))).result(60)
        assert text == full[:full.find(cut_at)] and event.finish_reason == "stop"
    finally:
        engine.stop()


def test_a_cancelled_job_leaves_its_slot_to_the_next(lm):
    engine = Engine(lm.model, lm.tokenizer, max_batch=1).start()
    try:
        first_text, cancelled = threading.Event(), threading.Event()
        seen, tokens_at_first_text = [], []

        def on_event(event):  # runs on the engine thread: hold it until the test has cancelled
            seen.append(event)
            if not first_text.is_set():
                tokens_at_first_text.append(len(long.tokens))
                first_text.set()
                cancelled.wait(30)

        long = Job(lm.encode_prompt("中国"), SamplingConfig(max_new_tokens=60, temperature=1.0, seed=1),
                   frozenset(), on_event=on_event)
        engine.submit(long)
        waiting = engine.submit(Job(lm.encode_prompt("经济"), SamplingConfig(max_new_tokens=5, greedy=True),
                                    frozenset()))
        assert first_text.wait(30)
        long.cancel()
        cancelled.set()
        text, event = waiting.result(timeout=30)
        assert event.finish_reason == "length" and len(waiting.tokens) == 5
        assert seen[-1].finish_reason == "cancelled"
        assert len(long.tokens) == tokens_at_first_text[0] < 60  # not one step more after the cancel
        assert engine.load["active"] == 0
    finally:
        engine.stop()


def test_prompt_too_long_for_the_cache_is_refused(lm):
    engine = Engine(lm.model, lm.tokenizer, max_batch=2)
    from candorlm.errors import CandorError

    with pytest.raises(CandorError, match="exceeds the context"):
        engine.submit(Job([1] * 60, SamplingConfig(max_new_tokens=10), frozenset()))


@pytest.mark.parametrize("cfg", [dict(temperature=5e-324), dict(temperature=1e-40, top_p=1e-300),
                                 dict(temperature=2.0, repetition_penalty=0.01, top_k=1),
                                 dict(temperature=1e-30, repetition_penalty=100.0)])
def test_extreme_sampling_settings_decode_without_nan(lm, cfg):
    """Found by the schema fuzzer: a tiny temperature or penalty once overflowed to inf, then NaN."""
    engine = Engine(lm.model, lm.tokenizer, max_batch=2).start()
    try:
        job = engine.submit(Job(lm.encode_prompt("中国"), SamplingConfig(max_new_tokens=6, seed=0, **cfg), frozenset()))
        _, event = job.result(timeout=60)
    finally:
        engine.stop()
    assert event.finish_reason == "length" and event.error is None and len(job.tokens) == 6
    if cfg.get("temperature", 1) < 1e-20 and "repetition_penalty" not in cfg:
        greedy = reference(lm, job.prompt_ids, SamplingConfig(max_new_tokens=6, greedy=True), frozenset())
        assert job.tokens == greedy  # the limit of sampling as the temperature goes to 0
