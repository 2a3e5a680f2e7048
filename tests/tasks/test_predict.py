"""Using a fine-tuned run: `candorlm.load_task(RUN).predict([...])` and `candorlm predict` for every
task, inputs from text, JSON and files, clear errors for inputs a task cannot read, and the
package names that a submodule of the same name must not shadow."""

import json

import pytest

import candorlm
from candorlm.errors import CandorError
from candorlm.tasks import finetune
from candorlm.tasks.predict import read_inputs
from tests.conftest import assert_clean_error, run_cli
from tests.tasks.test_tasks import FAST, TINY_SCRATCH, write_jsonl

REVIEWS = [("这个手机很好用，屏幕清楚", "pos"), ("质量太差了，用两天就坏", "neg"), ("物流快，包装好，满意", "pos"),
           ("客服态度恶劣，不推荐", "neg")] * 12
QA = [{"context": f"{n}在{p}会见了客人。", "question": f"谁在{p}会见了客人？", "answer": n}
      for n in ("江泽民", "李鹏", "朱镕基", "乔石") for p in ("北京", "上海", "广州", "深圳", "天津", "重庆")]


def test_names_are_not_shadowed_by_submodules():
    import candorlm.prepare  # noqa: F401 (a submodule of the same name as the function)
    import candorlm.tasks.finetune  # noqa: F401
    from candorlm.tasks.finetune import finetune as implementation

    assert callable(candorlm.prepare) and candorlm.prepare.__module__ == "candorlm.prepare"
    assert callable(candorlm.tasks.finetune) and candorlm.tasks.finetune is finetune
    assert implementation.__module__ == "candorlm.tasks.finetune"
    assert candorlm.load_task is candorlm.tasks.predict.load_task


def test_read_inputs(tmp_path):
    assert read_inputs("很好用") == ["很好用"]
    assert read_inputs('{"context": "甲", "question": "乙"}') == [{"context": "甲", "question": "乙"}]
    text = tmp_path / "in.txt"
    text.write_text("一\n\n二\n", encoding="utf-8")
    assert read_inputs(str(text)) == ["一", "二"]
    lines = write_jsonl(tmp_path / "in.jsonl", ["一", {"text": "二"}])
    assert read_inputs(str(lines)) == ["一", {"text": "二"}]
    (tmp_path / "bad.jsonl").write_text('"ok"\n[1]\n', encoding="utf-8")
    with pytest.raises(CandorError, match=r"bad.jsonl:2: expected a JSON string or object"):
        read_inputs(str(tmp_path / "bad.jsonl"))
    with pytest.raises(CandorError, match="not valid JSON"):
        read_inputs("{oops")
    for name, content in (("empty.txt", b""), ("blank.txt", b"\n \n"), ("empty.jsonl", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CandorError, match="holds no inputs"):
            read_inputs(str(tmp_path / name))
    (tmp_path / "gbk.txt").write_bytes("很好用".encode("gbk"))
    with pytest.raises(CandorError, match="is not UTF-8 text"):
        read_inputs(str(tmp_path / "gbk.txt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run per task, from scratch (each trains its own tokenizer)."""
    root = tmp_path_factory.mktemp("predict")
    sent = write_jsonl(root / "reviews.jsonl", [{"text": f"{t}{i}", "label": lab} for i, (t, lab) in enumerate(REVIEWS)])
    qa = write_jsonl(root / "qa.jsonl", QA * 2)
    pairs = root / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in [("ni hao", "你好"), ("zhong guo", "中国"), ("bei jing", "北京"),
                                                        ("shang hai", "上海")] * 15), encoding="utf-8")
    pairs.write_text("".join(f"{s} {i}\t{t}{i}\n" for i, (s, t) in enumerate([("ni hao", "你好"), ("zhong guo", "中国"),
                                                                             ("bei jing", "北京")] * 20)),
                     encoding="utf-8")
    chat = write_jsonl(root / "chat.jsonl", [{"messages": [{"role": "user", "content": f"第{i}号是什么？"},
                                                           {"role": "assistant", "content": f"答案{i % 5}"}]}
                                             for i in range(60)])
    out = {}
    for task, data, extra in (("sentiment", sent, {"arch": "encoder"}), ("qa", qa, {"tokenizer": "char"}),
                              ("translate", pairs, {}), ("chat", chat, {"tokenizer": "char", "arch": "decoder"})):
        out[task] = root / task
        finetune(None, task=task, data=str(data), out=out[task], overrides=TINY_SCRATCH, evaluate=False,
                 **dict(FAST, epochs=2), **extra)
    return out


@pytest.mark.slow
def test_every_task_predicts(runs):
    sent = candorlm.load_task(runs["sentiment"])
    out = sent.predict(["这个手机很好用", {"text": "质量太差了"}])
    assert len(out) == 2 and all(o["label"] in ("neg", "pos") for o in out)
    for o in out:
        assert set(o["probabilities"]) == {"neg", "pos"} and abs(sum(o["probabilities"].values()) - 1) < 1e-3
        assert o["probability"] == max(o["probabilities"].values())
    tr = candorlm.load_task(runs["translate"]).predict(["ni hao", {"source": "bei jing"}], beam_size=1)
    assert all(isinstance(o["translation"], str) for o in tr)
    qa = candorlm.load_task(runs["qa"]).predict([{"context": QA[0]["context"], "question": QA[0]["question"]}])
    assert isinstance(qa[0]["answer"], str)
    chat = candorlm.load_task(runs["chat"])
    replies = chat.predict(["第3号是什么？", {"messages": [{"role": "user", "content": "第4号是什么？"}]}], system="简短回答")
    assert [set(r) for r in replies] == [{"reply"}, {"reply"}]
    # the same prediction as the evaluation's decoding: the qa run's own scorer agrees
    from candorlm.tasks.qa import predict_answers

    qa_model = candorlm.load_task(runs["qa"])
    assert predict_answers(qa_model.model, qa_model.tokenizer, qa_model.config, qa_model.info,
                           [(QA[0]["context"], QA[0]["question"])]) == [qa[0]["answer"]]


@pytest.mark.slow
def test_bad_inputs_name_what_the_task_reads(runs):
    with pytest.raises(CandorError, match="takes objects with 'context' and 'question'"):
        candorlm.load_task(runs["qa"]).predict(["谁来了？"])
    with pytest.raises(CandorError, match="input 2: expected a non-empty string or an object with a 'text'"):
        candorlm.load_task(runs["sentiment"]).predict(["好", {"label": "pos"}])
    with pytest.raises(CandorError, match="a list of inputs"):
        candorlm.load_task(runs["sentiment"]).predict("好")


@pytest.mark.slow
def test_predict_refuses_options_its_run_does_not_read(runs):
    with pytest.raises(CandorError, match="a sentiment run takes no beam-size option$"):
        candorlm.load_task(runs["sentiment"]).predict(["好"], beam_size=2)
    with pytest.raises(CandorError, match="a qa run takes no system option; it takes max-answer"):
        candorlm.load_task(runs["qa"]).predict([], system="hi")  # checked even with nothing to predict
    assert_clean_error(run_cli("predict", runs["sentiment"], "--input", "好", "--system", "简短回答", check=False),
                       "a sentiment run takes no system option")
    assert_clean_error(run_cli("predict", runs["chat"], "--input", "你好", "--beam-size", "2", check=False),
                       "a chat run takes no beam-size option; it takes system, max-new-tokens, no-repeat-ngram")
    # what each run reads still works, and the translator's beam (default 4) can be set
    assert run_cli("predict", runs["translate"], "--input", "ni hao", "--beam-size", "1").stdout.strip()


@pytest.mark.slow
def test_predict_command_line(runs, tmp_path):
    proc = run_cli("predict", runs["sentiment"], "--input", "这个手机很好用", "--input", "太差了")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in rows] == ["这个手机很好用", "太差了"] and all("label" in r for r in rows)
    questions = write_jsonl(tmp_path / "q.jsonl", [{"context": q["context"], "question": q["question"]} for q in QA[:3]])
    out = tmp_path / "answers.jsonl"
    run_cli("predict", runs["qa"], "--input", questions, "--output", out)
    assert [json.loads(line)["input"]["question"] for line in out.read_text(encoding="utf-8").splitlines()] == \
        [q["question"] for q in QA[:3]]
    # a task run that cannot generate says how to use it
    assert_clean_error(run_cli("generate", runs["sentiment"], "--prompt", "好", check=False), "candorlm predict")
    assert_clean_error(run_cli("predict", runs["qa"], "--input", "谁？", check=False), "'context' and 'question'")


@pytest.mark.slow
def test_predict_output_never_replaces_what_candorlm_did_not_write(runs, tmp_path):
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("这个手机很好用\n太差了\n", encoding="utf-8")
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("years of work", encoding="utf-8")
    sent = runs["sentiment"]
    assert_clean_error(run_cli("predict", sent, "--input", reviews, "--output", thesis, check=False),
                       "already exists", "--overwrite")
    assert_clean_error(run_cli("predict", sent, "--input", reviews, "--output", thesis, "--overwrite", check=False),
                       "was not written by candorlm")
    assert_clean_error(run_cli("predict", sent, "--input", reviews, "--output", reviews, "--overwrite", check=False),
                       "is the input")
    assert_clean_error(run_cli("predict", sent, "--input", "好", "--output", sent, "--overwrite", check=False),
                       "is the input")
    assert thesis.read_text(encoding="utf-8") == "years of work"
    assert reviews.read_text(encoding="utf-8") == "这个手机很好用\n太差了\n"
    out = tmp_path / "labels.jsonl"
    run_cli("predict", sent, "--input", reviews, "--output", out)
    run_cli("predict", sent, "--input", "好", "--output", out, "--overwrite")  # its own output: replaced
    assert [json.loads(line)["input"] for line in out.read_text(encoding="utf-8").splitlines()] == ["好"]
    beside = sent / "predictions.jsonl"  # inside the run: fine (predict reads only the run's own files)
    run_cli("predict", sent, "--input", "好", "--output", beside)
    beside.unlink()
    out.write_text("my edits", encoding="utf-8")
    assert_clean_error(run_cli("predict", sent, "--input", "好", "--output", out, "--overwrite", check=False),
                       "changed since")
    assert out.read_text(encoding="utf-8") == "my edits"


@pytest.mark.slow
def test_a_run_without_its_task_json_is_one_line(runs, tmp_path):
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(runs["sentiment"], run)
    (run / "task.json").unlink()
    proc = run_cli("predict", run, "--input", "好", "--no-verify", check=False)
    assert_clean_error(proc, "task.json is missing")


@pytest.mark.slow
def test_predict_reads_an_encrypted_run_with_key_file(runs, tmp_path):
    run = tmp_path / "sent.enc"
    key = tmp_path / "k.key"
    run_cli("keygen", "-o", key)
    run_cli("encrypt", runs["sentiment"], "-o", run, "--key-file", key)
    assert_clean_error(run_cli("predict", run, "--input", "好", check=False))
    proc = run_cli("predict", run, "--input", "很好用", "--key-file", key)
    assert json.loads(proc.stdout)["label"] in ("neg", "pos")
    # predictions are plain text: never written into the encrypted run
    assert_clean_error(run_cli("predict", run, "--input", "很好用", "--key-file", key, "--output", run / "p.jsonl",
                               check=False), "is encrypted", "--output FILE")
    assert not (run / "p.jsonl").exists()


@pytest.mark.slow
def test_chat_evaluation_scores_kinds_and_single_task_baselines(runs):
    from candorlm.tasks import evaluate_task

    result = evaluate_task(runs["chat"], "chat", data="builtin:chat", limit=6, baseline_runs=[runs["sentiment"]])
    model = result["model"]
    assert model["turns"] > 0 and 0 <= model["degenerate"] <= 1 and "sentiment" in model["by_kind"]
    assert result["decoding"]["no_repeat_ngram"] == 3 and result["decoding"]["stop"] == "<|end|>"
    single = result["single_task"][0]
    assert single["task"] == "sentiment" and set(single["by_kind"]) == {"sentiment"}
    assert single["by_kind"]["sentiment"]["n"] == model["by_kind"]["sentiment"]["n"]  # the same turns
    assert "--baseline-runs" in result["command"]
    with pytest.raises(CandorError, match="a sentiment or a qa run"):
        evaluate_task(runs["chat"], "chat", data="builtin:chat", limit=2, baseline_runs=[runs["translate"]])
