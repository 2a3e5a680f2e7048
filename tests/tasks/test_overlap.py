"""Held-out examples the start run already read (tasks/overlap.py): the check itself, and a
fine-tune from a pretrained run that says so and keeps it in task.json."""

import json
import logging

import pytest

from candorlm.config import RunConfig
from candorlm.corpus import review_records
from candorlm.shards import ShardSet
from candorlm.tasks import finetune, overlap
from candorlm.tasks.data import Record
from candorlm.tasks.overlap import WINDOW, overlap_warning, pretraining_overlap, window_hashes


def _split_text(data_dir, split):
    shards = ShardSet(data_dir)
    return "".join(shards.tokenizer.decode([int(t) for t in a]) for a in shards.arrays(split))


def _rec(*texts):
    return Record({"messages": [{"role": "user", "content": t} for t in texts]}, "test")


def test_window_hashes_ignore_whitespace_and_need_a_whole_window():
    text = "人民日报" * 10
    assert len(window_hashes(text)) == len(text) - WINDOW + 1
    assert (window_hashes(" \n".join(text)) == window_hashes(text)).all()
    assert len(window_hashes(text[:WINDOW - 1])) == 0
    assert window_hashes("一" + text[:WINDOW])[1] == window_hashes(text[:WINDOW])[0]


def test_a_passage_of_the_pretraining_text_is_seen_and_the_held_out_text_is_not(data_dir, monkeypatch):
    train = "".join(_split_text(data_dir, "train").split())
    val = "".join(_split_text(data_dir, "val").split())
    mid = len(train) // 2
    passage = train[mid:mid + 40]
    spaced = " ".join(train[mid + 500:mid + 540])  # whitespace differs, the characters do not
    unseen = next(val[i:i + 60] for i in range(0, len(val) - 60, 60) if not any(
        val[j:j + WINDOW] in train for j in range(i, i + 60 - WINDOW + 1)))
    review = review_records()[3][0]
    records = [_rec("问：" + passage), _rec(spaced), _rec(unseen), _rec(review), _rec("短")]
    result = pretraining_overlap(RunConfig(data={"path": str(data_dir)}), records)
    assert result["checked"] and result["test_examples"] == 5
    assert result["seen"] == 2 and result["too_short"] == 1 and result["share"] == 0.4
    monkeypatch.setattr(overlap, "CHUNK", 37)  # decoded in small pieces: no passage is lost at their edges
    assert pretraining_overlap(RunConfig(data={"path": str(data_dir)}), records) == result
    line = overlap_warning(result, "runs/pd")
    assert "2 of 5 test examples (40.0%)" in line and "runs/pd" in line
    assert overlap_warning({**result, "seen": 0}, "runs/pd") is None
    # People's Daily with its validation split under the tasks' 10%: the warning says how to hold their test out
    pd = {**result, "sources": ["builtin:peoples-daily"], "val_fraction": 0.05}
    assert "--val-fraction 0.1" in overlap_warning(pd, "runs/pd")
    assert "--val-fraction" not in overlap_warning({**pd, "val_fraction": 0.1}, "runs/pd")


def test_the_check_says_why_when_it_cannot_tell(data_dir, tmp_path, monkeypatch):
    gone = pretraining_overlap(RunConfig(data={"path": str(tmp_path / "moved")}), [_rec("x" * 40)])
    assert gone["checked"] is False and "not here" in gone["why"]
    assert pretraining_overlap(RunConfig(), [_rec("x" * 40)])["checked"] is False
    monkeypatch.setattr(overlap, "MAX_TOKENS", 10)
    big = pretraining_overlap(RunConfig(data={"path": str(data_dir)}), [_rec("x" * 40)])
    assert big["checked"] is False and "at most 10" in big["why"]
    assert overlap_warning(big, "runs/pd") is None


def test_finetune_from_a_pretrained_run_reports_test_examples_it_was_pretrained_on(tmp_path, trained_run, data_dir,
                                                                                    caplog):
    """Reviews made of the pretraining text's own passages: every test example was seen."""
    train = "".join(_split_text(data_dir, "train").split())
    rows = [{"text": train[i * 45:i * 45 + 40], "label": ("pos", "neg")[i % 2]} for i in range(120)]
    path = tmp_path / "seen.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        finetune(trained_run, task="sentiment", data=str(path), out=tmp_path / "sent", max_steps=1, batch_size=8,
                 threads=1, precision="fp32", evaluate=False)
    info = json.loads((tmp_path / "sent" / "task.json").read_text())
    found = info["pretraining_overlap"]
    assert found["checked"] and found["test_examples"] > 0 and found["seen"] == found["test_examples"]
    assert "may be memory, not skill" in caplog.text
    # from fresh weights (--scratch) nothing was read before: no check, nothing said
    finetune(trained_run, task="sentiment", data=str(path), out=tmp_path / "scratch", scratch=True, max_steps=1,
             batch_size=8, threads=1, precision="fp32", evaluate=False)
    assert "pretraining_overlap" not in json.loads((tmp_path / "scratch" / "task.json").read_text())


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("task", ["chat", "qa", "translate"])
def test_every_task_keeps_its_test_records_for_the_check(task, tmp_path, pairs_file):
    from candorlm.tasks.base import load_base
    from candorlm.tasks.registry import get_task

    texts = [t for t, _ in review_records()[:300]]
    data = {"chat": lambda: _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": t},
                                                                       {"role": "assistant", "content": "好"}]}
                                                         for t in texts]),
            "qa": lambda: _jsonl(tmp_path / "q.jsonl", [{"context": t, "question": t[:6] + "是什么？", "answer": t[:2]}
                                                        for t in texts]),
            "translate": lambda: str(pairs_file)}[task]()
    spec = get_task(task)
    base = load_base(None, preset="tiny", arch=spec.default_arch, overrides=["model.d_model=32", "model.n_layers=1",
                                                                            "model.n_heads=2"])
    prepared = spec.prepare(base, data)
    assert prepared.records["test"] and len(prepared.records["test"]) == prepared.info["test_size"]
