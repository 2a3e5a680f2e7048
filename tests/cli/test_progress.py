"""Saying how long before it starts, and how far along: finetune's budget flags, bars that nest
(an evaluation inside fine-tuning) and count what they score, task results printed as a table
against the baselines."""

from __future__ import annotations

import re

import pytest

from candorlm import progress
from tests.cli.test_table import helps


def test_finetune_offers_the_budget_flags():
    text = " ".join(helps("finetune").split())
    for flag in ("--max-steps", "--time", "--eval-limit", "--no-test", "--test"):
        assert re.search(rf"{flag}\b", text), flag
    assert "90s, 5m, 1h" in text and "says how long it will take before it starts" in text


@pytest.mark.parametrize("shown", ["1", "0"])
def test_bars_nest_and_batches_cover_every_item(monkeypatch, shown):
    monkeypatch.setenv("CANDORLM_PROGRESS", shown)
    seen = []
    with progress.progress_bar("fine-tuning", total=3) as outer:
        for chunk in progress.batched(list(range(10)), 4, "scoring"):  # a second bar inside the first
            seen.extend(chunk)
        outer.advance(3)
        outer.update(total=5)
    assert seen == list(range(10)) and not progress._active


def test_task_results_print_as_a_table_against_the_baselines(capsys):
    from candorlm.cli.tasks import print_task_result

    result = {"task": "sentiment", "data": "builtin:reviews", "split": {"test": 1490},
              "models": [{"run": "runs/s", "arch": "encoder", "accuracy": 0.8479, "macro_f1": 0.84}],
              "baselines": {"majority": {"predicts": "neg", "accuracy": 0.5, "macro_f1": 0.33},
                            "tfidf_char_1_3_logreg": {"features": 9, "accuracy": 0.834, "macro_f1": 0.83}}}
    print_task_result(result, "runs/s")
    out = capsys.readouterr().out
    assert "84.8%" in out and "83.4%" in out and "{" not in out  # percent, not raw JSON cells
    assert "TF-IDF character 1-3-grams" in out and "ahead by 1.4 points" in " ".join(out.split())
    print_task_result({})  # --no-test: nothing to show
    assert capsys.readouterr().out == ""


def test_no_help_speaks_python():
    from tests.cli.test_table import ALL

    for path in ALL:
        text = " ".join(helps(*path.split()).split())
        assert "(None:" not in text and "--no-no-" not in text, path
    assert "(default: 5e-4" in " ".join(helps("finetune").split())
