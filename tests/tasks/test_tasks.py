"""Fine-tuning and task evaluation end to end on tiny data: sentiment, translate, qa; the built-in
task data rules; every bad-input case is a clear error naming the file (and line), with nothing written."""

import json
import shutil

import pytest

from candorlm.corpus import peoples_daily_tagged, review_records
from candorlm.errors import CandorError
from candorlm.io.manifest import write_manifest
from candorlm.tasks import evaluate_task, finetune
from candorlm.tasks.data import split_records
from candorlm.tasks.qa import align_and_copy, char_f1, questions_for
from candorlm.tasks.sentiment import load_records
from candorlm.tasks.translate import sentences, to_pinyin
from tests.conftest import assert_clean_error, run_cli

FAST = dict(epochs=1, batch_size=16, threads=1, precision="fp32")  # tiny models: fp32 and one thread are fastest
TINY_SCRATCH = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=96"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reviews_file(tmp_path_factory):
    rows = [{"text": t, "label": lab} for t, lab in review_records()[::50]]
    return write_jsonl(tmp_path_factory.mktemp("sent") / "reviews.jsonl", rows)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    rows = []
    for i, article in enumerate(peoples_daily_tagged()):
        if i >= 40:
            break
        for line in article:
            qs = questions_for(line)
            if qs:
                rows.append({k: qs[0][k] for k in ("context", "question", "answer")})
    return write_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl", rows)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    # the first 300 builtin:pinyin pairs, made from the first articles only (fast)
    from candorlm.corpus import peoples_daily_documents

    lines = []
    for i, doc in enumerate(peoples_daily_documents()):
        if len(lines) >= 300:
            break
        for s in sentences(doc.text):
            lines.append(f"{to_pinyin(s.replace(' ', ''))}\t{s.replace(' ', '')}")
    path = tmp_path_factory.mktemp("tr") / "pairs.tsv"
    path.write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- the built-in data rules


def test_sentiment_split_is_fixed_and_disjoint():
    records, labels = load_records("builtin:reviews")
    splits = split_records(records, key="text")
    assert labels == ["neg", "pos"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 14859, "dev": 752, "test": 1752}
    texts = {k: {r["text"] for r in v} for k, v in splits.items()}
    assert not texts["test"] & (texts["train"] | texts["dev"])


def test_pinyin_pairs_are_aligned_and_toneless():
    assert to_pinyin("中国人民银行行长说：绿色。") == "zhong guo ren min yin hang hang zhang shuo ： lv se 。"
    assert sentences("第一句。第二句！\nABC\n第三句") == ["第一句。", "第二句！", "第三句"]
    long = "很" * 40 + "，" + "好" * 40
    assert [len(s) for s in sentences(long)] == [41, 40]


def test_qa_rule_makes_in_place_questions():
    line = [("江", "nr"), ("泽民", "nr"), ("在", "p"), ("北京", "ns"), ("会见", "v"), ("客人", "n"), ("。", "w")]
    qs = questions_for(line)
    assert {(q["question"], q["answer"]) for q in qs} == {("谁在北京会见客人？", "江泽民"), ("江泽民在哪里会见客人？", "北京")}
    assert all(q["context"] == "江泽民在北京会见客人。" for q in qs)
    assert align_and_copy("江泽民在北京会见客人。", "江泽民在哪里会见客人？") == "北京"
    assert char_f1("北京市", "北京") == pytest.approx(0.8)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_sentiment_decoder_and_encoder(tmp_path, trained_run, reviews_file):
    result = finetune(trained_run, task="sentiment", data=str(reviews_file), out=tmp_path / "dec", **FAST)
    for name in ("config.toml", "tokenizer.json", "model.safetensors", "task.json", "metrics.jsonl",
                 "evals/sentiment.json", "SHA256SUMS", ".candorlm.json"):  # the last two: loading checks the run
        assert (tmp_path / "dec" / name).is_file(), name
    info = json.loads((tmp_path / "dec" / "task.json").read_text())
    assert info["init"] == "pretrained" and info["labels"] == ["neg", "pos"] and info["pooling"] == "last"
    assert result["models"][0]["arch"] == "decoder" and 0 <= result["models"][0]["accuracy"] <= 1
    assert set(result["baselines"]) == {"majority", "tfidf_char_1_3_logreg"}
    # an encoder from scratch (no run: it trains its own tokenizer), compared on the same split
    finetune(None, task="sentiment", data=str(reviews_file), out=tmp_path / "enc", arch="encoder",
             overrides=TINY_SCRATCH, evaluate=False, **FAST)
    both = evaluate_task(tmp_path / "dec", "sentiment", compare=[tmp_path / "enc"])
    assert [m["arch"] for m in both["models"]] == ["decoder", "encoder"]
    assert [m["init"] for m in both["models"]] == ["pretrained", "scratch"]
    assert both["split"]["test"] == result["split"]["test"] > 0
    assert "--compare" in both["command"]
    written = json.loads((tmp_path / "dec" / "evals" / "sentiment.json").read_text())
    assert written["models"] == both["models"]
    with pytest.raises(CandorError, match="sentiment classifier"):
        from candorlm.lm import load

        load(tmp_path / "dec")


@pytest.mark.slow
def test_translate_seq2seq_from_scratch(tmp_path, pairs_file):
    out = tmp_path / "tr"
    result = finetune(None, task="translate", data=str(pairs_file), out=out, overrides=TINY_SCRATCH, beam_size=2,
                      **dict(FAST, epochs=2))
    assert (out / "source_tokenizer.json").is_file()  # pinyin in, characters out: two vocabularies
    assert result["baseline"]["name"].startswith("most frequent character")
    for key in ("char_accuracy", "han_char_accuracy", "chrf", "bleu"):
        assert key in result["model"] and key in result["baseline"] and key in result["greedy"]
    assert result["model"]["decoding"].startswith("beam search, beam 2")
    assert result["split"]["test"] > 0
    proc = run_cli("generate", out, "--prompt", "zhong guo", check=False)
    assert_clean_error(proc, "seq2seq model", "candorlm eval")


@pytest.mark.slow
def test_qa_decoder_and_seq2seq(tmp_path, trained_run, qa_file, data_dir):
    result = finetune(trained_run, task="qa", data=str(qa_file), out=tmp_path / "qa", **FAST)
    assert {"exact_match", "char_f1"} <= set(result["model"])
    assert result["baselines"]["align_and_copy"]["exact_match"] > 0.8  # the rule is mostly solvable by matching
    again = evaluate_task(tmp_path / "qa", "qa")
    assert again["model"] == result["model"]  # deterministic (greedy)
    from candorlm.pretrain import train
    from tests.conftest import TINY_MODEL, TINY_TRAIN

    train(tmp_path / "s2s", data=data_dir, model=dict(TINY_MODEL, arch="seq2seq"), max_steps=2, **TINY_TRAIN)
    s2s = finetune(tmp_path / "s2s", task="qa", data=str(qa_file), out=tmp_path / "qa2", **FAST)
    assert s2s["model"]["arch"] == "seq2seq"


# ---------------------------------------------------------------- bad input


def lacking_sep(run, tmp_path):
    """A copy of `run` whose tokenizer has no <|sep|> (as a tokenizer imported from elsewhere)."""
    copy = tmp_path / "nosep"
    shutil.copytree(run, copy)
    text = (copy / "tokenizer.json").read_text(encoding="utf-8").replace("<|sep|>", "<|sepx|>")
    (copy / "tokenizer.json").write_text(text, encoding="utf-8")
    (copy / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}))
    write_manifest(copy)  # a deliberate change: the run's manifest follows it (loading checks it)
    return copy


@pytest.mark.parametrize("case", ["label", "empty_target", "empty_source", "columns", "role", "no_assistant",
                                  "not_json", "tokenizer"])
def test_bad_task_input(case, tmp_path, trained_run):
    out = tmp_path / "out"
    f = tmp_path / "data"
    if case == "label":
        f = write_jsonl(tmp_path / "r.jsonl", [{"text": "好", "label": "pos"}, {"text": "差", "label": "neg"},
                                                {"text": "一般", "label": "neutral"}])
        args = dict(task="sentiment", labels=["neg", "pos"])
        expect = f"{f}:3: label 'neutral' is not in the label set (neg, pos)"
    elif case in ("empty_target", "empty_source", "columns"):
        f = tmp_path / "p.tsv"
        bad = {"empty_target": "ni hao\t", "empty_source": "\t你好", "columns": "ni\thao\t你好"}[case]
        f.write_text(f"zhong guo\t中国\n{bad}\n", encoding="utf-8")
        args = dict(task="translate")
        expect = {"empty_target": f"{f}:2: the target is empty", "empty_source": f"{f}:2: the source is empty",
                  "columns": f"{f}:2: expected 2 tab-separated columns (source<TAB>target), found 3"}[case]
    elif case in ("role", "no_assistant"):
        messages = [{"role": "user", "content": "你好"}]
        messages.append({"role": "bot", "content": "你好"} if case == "role" else {"role": "user", "content": "在吗"})
        f = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]},
                                               {"messages": messages}])
        args = dict(task="chat")
        expect = (f"{f}:2: message 1 has the unknown role 'bot'" if case == "role"
                  else f"{f}:2: the conversation has no assistant turn")
    elif case == "not_json":
        f = tmp_path / "q.jsonl"
        f.write_text('{"context": "a", "question": "b", "answer": "c"}\n{"context": "a", "question": \n', encoding="utf-8")
        args = dict(task="qa")
        expect = f"{f}:2: not valid JSON"
    else:
        args = dict(task="qa")
        f = write_jsonl(tmp_path / "q.jsonl", [{"context": "李鹏在北京", "question": "谁在北京？", "answer": "李鹏"}])
        trained_run = lacking_sep(trained_run, tmp_path)
        expect = f"{trained_run / 'tokenizer.json'}: the tokenizer lacks <|sep|>, which the qa task needs"
    with pytest.raises(CandorError) as err:
        finetune(trained_run, data=str(f), out=out, **FAST, **args)
    assert expect in str(err.value)
    assert not out.exists()  # nothing half-written
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_bad_input_on_the_command_line(tmp_path, trained_run):
    f = tmp_path / "p.tsv"
    f.write_text("zhong guo\t中国\nni hao\n", encoding="utf-8")
    proc = run_cli("finetune", "--task", "translate", "--data", f, "--out", tmp_path / "o", check=False)
    assert_clean_error(proc, f"{f}:2: expected 2 tab-separated columns")
    assert not (tmp_path / "o").exists()
    proc = run_cli("finetune", trained_run, "--task", "summarize", "--data", f, "--out", tmp_path / "o", check=False)
    assert_clean_error(proc, "unknown task 'summarize'", "sentiment, translate, qa, chat")


def test_task_commands_have_help_with_examples():
    from typer.testing import CliRunner

    from candorlm.cli import app

    for cmd in ("finetune", "eval", "chat"):
        out = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "Example" in out and "candorlm" in out, out
