"""Property tests (Hypothesis): whatever a user puts in a config value or a corpus file, candorlm
either succeeds or stops with a CandorError (one line, exit code 2), never a traceback.

- Config values through `--set` (`parse_override`) and the loader (`resolve`): numbers of every
  size and sign, inf, nan, strings, booleans, arrays, on every numeric key of [model] and [train].
- Corpus bytes through the corpus reader and `prepare`: random bytes, UTF-8/16/32 text with and
  without a byte-order mark, NUL characters, lone surrogates, long lines.

The library is called directly (fast); a few real `candorlm` processes check the exit code.
"""

from __future__ import annotations

import codecs

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from candorlm.config import ModelConfig, RunConfig, TrainConfig, parse_override, resolve
from candorlm.corpus import MAX_LINE_CHARS, Corpus
from candorlm.errors import CandorError
from tests.conftest import run_cli

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _numeric_keys(section: str, model: type) -> list[str]:
    return [f"{section}.{name}" for name, f in model.model_fields.items()
            if any(t in str(f.annotation) for t in ("int", "float"))]


KEYS = _numeric_keys("model", ModelConfig) + _numeric_keys("train", TrainConfig)

_TOML_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),  # repr: 'nan', 'inf', '1e+300' are TOML
    st.sampled_from(["inf", "-inf", "+inf", "nan", "-nan", "1e308", "1e309", "-0.0", "0", "-1", "1e-320",
                     "0x10", "1_000", "true", "false", "[1, 2]", "{a = 1}", '"3e-4"', "'lr'", ""]),
    st.text(max_size=20),
)


def _outcome(fn) -> object:
    """What a call gives: its result, or the CandorError it raised (anything else fails the test)."""
    try:
        return fn()
    except CandorError as exc:
        assert str(exc).strip(), "an empty error message"
        return exc


@FAST
@given(key=st.sampled_from(KEYS), value=_TOML_NUMBERS)
@example(key="train.lr", value="nan")
@example(key="train.lr", value="inf")
@example(key="train.weight_decay", value="nan")
@example(key="model.d_model", value="1e400")
def test_a_config_value_is_accepted_or_refused_with_a_candor_error(key, value):
    def load() -> RunConfig:
        return resolve("tiny", None, [f"{key}={value}"])

    result = _outcome(load)
    if isinstance(result, RunConfig):  # what was accepted can be written and read back
        section, name = key.split(".")
        got = getattr(getattr(result, section), name)
        assert isinstance(got, (int, float, type(None))), (key, value, got)
        assert _outcome(lambda: RunConfig.model_validate(result.model_dump())) is not None


@FAST
@given(item=st.text(max_size=40))
def test_any_override_text_parses_or_is_refused(item):
    _outcome(lambda: parse_override(item))


@pytest.mark.slow
@pytest.mark.parametrize("value", ["train.lr=nan", "train.lr=-inf", "model.d_model=1e400", "train.max_steps='many'",
                                   "train.batch_size=-3", "model.n_layers=true"])
def test_a_bad_config_value_on_the_command_line_is_one_line_exit_2(value):
    proc = run_cli("estimate", "--preset", "tiny", "--tokens", "1e6", "--hardware", "h100", "--set", value,
                   check=False)
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- corpus bytes

_ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "gb18030"]


@st.composite
def corpus_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "text", "surrogate", "long"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000))
    text = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=400))
    if draw(st.booleans()):
        text = text.replace("a", "\x00")  # NUL characters inside text
    if kind == "surrogate":  # a lone surrogate, as some tools write it: not valid in any UTF
        text = text + chr(draw(st.integers(0xD800, 0xDFFF))) + "\n"
        return text.encode(draw(st.sampled_from(["utf-8", "utf-16-le", "utf-32-le"])), errors="surrogatepass")
    if kind == "long":
        text = text + draw(st.sampled_from("x中 \x00")) * draw(st.integers(MAX_LINE_CHARS - 2, 3 * MAX_LINE_CHARS))
    encoding = draw(st.sampled_from(_ENCODINGS))
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode("utf-8")


@FAST
@given(data=corpus_bytes(), suffix=st.sampled_from([".txt", ".jsonl"]))
@example(data=codecs.BOM_UTF16_LE + "第一段\n\n第二段\n".encode("utf-16-le"), suffix=".txt")
@example(data="abc\n".encode("utf-32-be"), suffix=".txt")
@example(data=b"\xed\xa0\x80\n", suffix=".txt")  # a lone surrogate in UTF-8
@example(data=b"\x00" * 100, suffix=".txt")
@example(data=b'{"text": "\\ud800"}\n', suffix=".jsonl")  # JSON's escaped lone surrogate
def test_corpus_bytes_are_read_or_refused_with_a_candor_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("c") / f"corpus{suffix}"
    path.write_bytes(data)
    corpus = Corpus([path])
    docs = _outcome(lambda: [d.text for d in corpus])
    if isinstance(docs, list):
        for text in docs:
            text.encode("utf-8")  # every document can be written as UTF-8 (no lone surrogates)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=corpus_bytes())
@example(data=("第一段\n\n" * 40 + "x" * (3 * MAX_LINE_CHARS)).encode("utf-16"))
def test_prepare_on_any_bytes_succeeds_or_is_refused(tmp_path_factory, data):
    from candorlm.prepare import prepare

    root = tmp_path_factory.mktemp("p")
    path = root / "corpus.txt"
    path.write_bytes(data)
    result = _outcome(lambda: prepare([str(path)], root / "data", tokenizer="char", val_fraction=0.5, workers=1))
    if not isinstance(result, CandorError):
        assert (root / "data" / "meta.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("data", [bytes(range(256)) * 8, "第一段\n\n第二段\n".encode("utf-16-be"),
                                  b"ok\n\n\xed\xa0\x80 lone\n", ("a" * 50_000 + "\n\nb\n").encode("utf-32")],
                         ids=["bytes", "utf16-no-bom", "lone-surrogate", "long-utf32"])
def test_prepare_on_the_command_line_is_one_line_exit_2_or_success(tmp_path, data):
    (tmp_path / "c.txt").write_bytes(data)
    proc = run_cli("prepare", "c.txt", "--out", "data", "--tokenizer", "char", "--val-fraction", "0.5",
                   cwd=tmp_path, check=False)
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr
