import pytest
import torch

from candorlm.config import ModelConfig
from candorlm.errors import CandorError
from candorlm.generate import SamplingConfig, filter_top_k_top_p, generate_ids
from candorlm.lm import LanguageModel
from candorlm.model import DecoderLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=101, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                 max_seq_len=64)).eval()


PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]


@pytest.mark.parametrize("cfg", [SamplingConfig(max_new_tokens=20, greedy=True),
                                 SamplingConfig(max_new_tokens=20, temperature=0.9, top_k=20, top_p=0.9, seed=3),
                                 SamplingConfig(max_new_tokens=20, temperature=1.2, repetition_penalty=1.3, seed=4)])
def test_cached_and_uncached_decoding_give_identical_tokens(model, cfg):
    cached = generate_ids(model, PROMPTS, cfg, use_cache=True)
    uncached = generate_ids(model, PROMPTS, cfg, use_cache=False)
    assert cached == uncached
    assert all(len(row) == 20 for row in cached)


def test_batched_greedy_equals_one_at_a_time(model):
    cfg = SamplingConfig(max_new_tokens=12, greedy=True)
    batched = generate_ids(model, PROMPTS, cfg)
    single = [generate_ids(model, [p], cfg)[0] for p in PROMPTS]
    assert batched == single


def test_seed_makes_sampling_repeatable(model):
    cfg = SamplingConfig(max_new_tokens=15, temperature=1.0, seed=11)
    assert generate_ids(model, PROMPTS, cfg) == generate_ids(model, PROMPTS, cfg)
    other = SamplingConfig(max_new_tokens=15, temperature=1.0, seed=12)
    assert generate_ids(model, PROMPTS, cfg) != generate_ids(model, PROMPTS, other)


def test_top_k_one_is_greedy(model):
    greedy = generate_ids(model, PROMPTS, SamplingConfig(max_new_tokens=10, greedy=True))
    topk = generate_ids(model, PROMPTS, SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=1, seed=0))
    assert greedy == topk


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_top_k_top_p(logits, None, 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_top_k_top_p(logits, 2, None))
    assert kept.tolist() == [[True, True, False, False]]


def test_stop_tokens_end_a_row(model):
    first = generate_ids(model, [PROMPTS[0]], SamplingConfig(max_new_tokens=10, greedy=True))[0]
    stopped = generate_ids(model, [PROMPTS[0]], SamplingConfig(max_new_tokens=10, greedy=True), stop_ids=[first[2]])
    assert stopped[0] == first[:first.index(first[2]) + 1]


def test_suppressed_tokens_never_appear(model):
    out = generate_ids(model, PROMPTS, SamplingConfig(max_new_tokens=30, temperature=2.0, seed=0),
                       suppress_ids=range(0, 50))
    assert all(t >= 50 for row in out for t in row)


def test_too_long_is_a_clear_error(model):
    with pytest.raises(CandorError, match="maximum sequence length"):
        generate_ids(model, [[1] * 60], SamplingConfig(max_new_tokens=10))


def test_text_generation_streams_and_stops(trained_run):
    lm = LanguageModel.load(trained_run)
    full = lm.generate("中国", max_new_tokens=20, greedy=True)
    streamed = "".join(lm.stream("中国", max_new_tokens=20, greedy=True))
    assert streamed == full and len(full) > 0
    # Streaming never cuts a character that later tokens complete: the text is the generated
    # tokens' bytes decoded whole (a barely trained model may emit bytes that are not UTF-8 at all;
    # those read as U+FFFD either way).
    ids = generate_ids(lm.model, [lm.encode_prompt("中国")], SamplingConfig(max_new_tokens=20, greedy=True),
                       suppress_ids=[i for i in lm.tokenizer.special_ids if i != lm.tokenizer.eos_id])[0]
    assert full == lm.tokenizer.decode(ids)
    stop = full[3:5]
    cut = lm.generate("中国", max_new_tokens=20, greedy=True, stop=[stop])
    assert cut == full[:full.find(stop)]
    batch = lm.generate(["中国", "今天的", "经济"], max_new_tokens=10, greedy=True)
    assert batch[0] == lm.generate("中国", max_new_tokens=10, greedy=True)
