"""Fine-tuning's pace: a step count or a time budget (driven by a fake clock), the forecasts it logs,
and --max-steps / --time / --eval-limit / --no-test end to end on a tiny model."""

import json
import logging

import pytest

from candorlm.config import TrainConfig
from candorlm.errors import CandorError
from candorlm.forecast import after_first_steps, forecast_flops, parse_duration, say_duration
from candorlm.tasks import finetune
from candorlm.tasks.pace import BUDGET_STEPS, FIRST_STEPS, Pace, eval_forecast
from tests.tasks.test_tasks import FAST, TINY_SCRATCH, reviews_file  # noqa: F401 (a fixture)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_durations_parse_and_read():
    assert [parse_duration(x) for x in ("90", "90s", "5m", "1.5h", "1h30m", 42)] == [90, 90, 300, 5400, 5400, 42]
    for bad in ("", "5 parsecs", "m5", "-3m", "0s"):
        with pytest.raises(CandorError, match="duration"):
            parse_duration(bad)
    assert [say_duration(s) for s in (0.2, 40, 600, 9000)] == ["1 s", "40 s", "10 min", "2.5 h"]


def test_a_step_count_keeps_the_cosine_schedule_and_forecasts_after_the_first_steps(caplog):
    t = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, batch_size=8)
    clock = Clock()
    pace = Pace(t, clock=clock)
    pace.begin(dev_size=80)
    assert pace.lr(0) == pytest.approx(1e-4) and pace.lr(9) == pytest.approx(1e-3)
    with caplog.at_level(logging.INFO, logger="candorlm"):
        for step in range(1, 1 + FIRST_STEPS + 1):
            clock.now += 2.0
            assert pace.after_step(step) is False
    assert pace.max_steps == 100 and pace.step_s == pytest.approx(2.0)
    said = caplog.text
    assert "measured: the first 6 steps" in said and "94 to go" in said and "about" in said


def test_a_time_budget_sizes_the_schedule_decays_by_time_and_stops_on_time():
    t = TrainConfig(max_steps=BUDGET_STEPS, lr=1e-3, batch_size=8, min_lr_ratio=0.1)
    clock = Clock()
    pace = Pace(t, budget_s=60.0, warmup_fraction=0.1, clock=clock)
    pace.begin(dev_size=0)
    step = 0
    while step < pace.max_steps:
        lr = pace.lr(step)
        clock.now += 1.0  # one second a step
        step += 1
        pace.after_step(step)
        if step == 1 + FIRST_STEPS:
            assert 50 <= pace.max_steps <= 60 and pace.warmup == round(0.1 * pace.max_steps)
        assert step < 200, "the budget never stopped the loop"
    assert 58 <= step <= 60 and pace.elapsed() <= 60
    assert lr == pytest.approx(1e-4, rel=0.1)  # decayed to min_lr_ratio by the end of the time
    rec = pace.record()
    assert rec["time_budget_s"] == 60 and rec["step_s"] == pytest.approx(1.0)


def test_a_time_budget_keeps_room_for_the_dev_evaluation():
    t = TrainConfig(max_steps=BUDGET_STEPS, lr=1e-3, batch_size=8)
    clock = Clock()
    pace = Pace(t, budget_s=100.0, clock=clock)
    pace.begin(dev_size=40)
    step = 0
    while step < pace.max_steps:
        clock.now += 1.0
        step += 1
        pace.after_step(step)
        if step == 30:  # an epoch ends: its dev evaluation takes 20 s
            with pace.evaluating(40):
                clock.now += 20.0
    with pace.evaluating(40):  # the final one
        clock.now += 20.0
    assert pace.elapsed() <= 101 and step >= 55
    assert pace.record()["dev_examples_per_s"] == pytest.approx(2.0)


def test_forecasts_say_what_they_rest_on(tmp_path):
    assert forecast_flops(1e12, None).seconds is None
    (tmp_path / "ledger.json").write_text(json.dumps({"version": 1, "train": {"total": {
        "achieved_flops_per_s": {"value": 1e10}, "device": {"value": "a machine seen nowhere"}}}}))
    assert forecast_flops(1e12, tmp_path).seconds is None  # measured elsewhere: not this machine's rate
    from candorlm.ledger.hardware import device_name
    import torch

    (tmp_path / "ledger.json").write_text(json.dumps({"version": 1, "train": {"total": {
        "achieved_flops_per_s": {"value": 1e10}, "device": {"value": device_name(torch.device("cpu"))}}}}))
    f = forecast_flops(1e12, tmp_path)
    assert f.seconds == pytest.approx(100) and "measured on this machine" in str(f) and "about 100 s" in str(f)
    assert after_first_steps(5, 10.0, 105, extra_s=60).seconds == pytest.approx(260)
    (tmp_path / "task.json").write_text(json.dumps({"test_size": 1000, "timing": {"dev_examples_per_s": 50}}))
    assert eval_forecast(tmp_path).seconds == pytest.approx(20)
    assert eval_forecast(tmp_path, limit=100).seconds == pytest.approx(2)
    assert eval_forecast(tmp_path / "nowhere").seconds is None


@pytest.mark.slow
def test_max_steps_time_eval_limit_and_no_test(tmp_path, reviews_file, caplog):  # noqa: F811
    common = dict(FAST, task="sentiment", data=str(reviews_file), arch="encoder", overrides=TINY_SCRATCH)
    with caplog.at_level(logging.INFO, logger="candorlm"):
        result = finetune(None, out=tmp_path / "steps", max_steps=7, eval_limit=5, **common)
    assert "estimated time" in caplog.text and "measured: the first" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "steps" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 7
    assert result["split"]["test"] == 5 and "--limit 5" in result["command"]
    info = json.loads((tmp_path / "steps" / "task.json").read_text())
    assert info["timing"]["step_s"] > 0 and info["timing"]["dev_examples_per_s"] > 0

    assert finetune(None, out=tmp_path / "timed", time_budget="3s", evaluate=False, **common) == {}
    assert not (tmp_path / "timed" / "evals" / "sentiment.json").exists()
    info = json.loads((tmp_path / "timed" / "task.json").read_text())
    assert info["timing"]["time_budget_s"] == 3 and info["timing"]["seconds"] < 30
    config = (tmp_path / "timed" / "config.toml").read_text()
    assert str(BUDGET_STEPS) not in config  # the steps the budget held, not the placeholder

    with pytest.raises(CandorError, match="max-steps"):
        finetune(None, out=tmp_path / "bad", max_steps=0, **common)
    with pytest.raises(CandorError, match="duration"):
        finetune(None, out=tmp_path / "bad2", time_budget="soon", **common)


def test_an_eval_limit_samples_across_the_split_not_its_start():
    from candorlm.tasks.data import Record, spread

    records = [Record({"label": "neg" if i < 50 else "pos"}, str(i)) for i in range(100)]  # sorted by label
    picked = spread(records, 10)
    assert len(picked) == 10 and {r["label"] for r in picked} == {"neg", "pos"}
    assert spread(records, None) is records and spread(records, 500) is records
