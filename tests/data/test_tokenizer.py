import pytest

from candorlm.errors import CandorError
from candorlm.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

SAMPLE = ["我爱编程。人民日报社论：祝贺１９９８年新年！", "Hello world, the model's 12345 tokens.", "混合 mixed 文本\n\n😀 emoji"]
TRICKY = "新的字：龘靐 😀🚀 tab\there  and\r\nCRLF, Ünïcödé, ١٢٣"


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_lossless_round_trip(kind):
    tok = train_tokenizer(SAMPLE * 20, kind, vocab_size=400, min_frequency=1)
    for text in SAMPLE + [TRICKY]:
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_have_fixed_ids():
    for kind in ("bpe", "char", "word"):
        tok = train_tokenizer(SAMPLE * 5, kind, vocab_size=400, min_frequency=1)
        assert [tok.hf.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
        assert tok.kind == kind


def test_word_tokenizer_uses_jieba():
    tok = train_tokenizer(["我爱编程"] * 5 + ["我爱北京"] * 5, "word", vocab_size=100, min_frequency=1)
    pieces = [tok.hf.id_to_token(i) for i in tok.encode("我爱编程")]
    assert pieces == ["我", "爱", "编程"]
    assert tok.decode(tok.encode("我爱编程")) == "我爱编程"


def test_byte_lengths_sum_to_utf8_bytes():
    for kind in ("bpe", "char"):
        tok = train_tokenizer(SAMPLE * 20, kind, vocab_size=400, min_frequency=1)
        lengths = tok.token_byte_lengths()
        for text in SAMPLE + [TRICKY]:
            assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))


def test_vocabulary_too_small():
    with pytest.raises(CandorError, match="too small"):
        train_tokenizer(SAMPLE, "bpe", vocab_size=200)


def test_save_load_and_transformers_agree(tmp_path):
    from transformers import PreTrainedTokenizerFast

    for kind in ("bpe", "char"):
        tok = train_tokenizer(SAMPLE * 20, kind, vocab_size=400, min_frequency=1)
        path = tmp_path / f"{kind}.json"
        tok.save(path)
        again = Tokenizer.load(path)
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
        for text in SAMPLE + [TRICKY]:
            assert again.encode(text) == tok.encode(text) == hf(text, add_special_tokens=False).input_ids
            assert hf.decode(hf(text).input_ids) == text


def test_corrupt_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CandorError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)
