"""An option only another task (or only the other kind of `eval`) reads is one line and exit 2,
never silently ignored (`predict` and `TaskModel.predict`: tests/tasks/test_predict.py)."""

import pytest

from tests.conftest import assert_clean_error, run_cli


@pytest.mark.parametrize("args, fragment", [
    (["finetune", "--task", "sentiment", "--data", "builtin:reviews", "--out", "o", "--beam-size", "2"],
     "--beam-size is a translate option, not a sentiment one"),
    (["finetune", "--task", "translate", "--data", "x.tsv", "--out", "o", "--labels", "a,b"],
     "--labels is a sentiment option, not a translate one"),
    (["eval", "r", "--task", "sentiment", "--beam-size", "8"], "--beam-size is a translate option, not a sentiment"),
    (["eval", "r", "--task", "qa", "--compare", "r2"], "--compare is a sentiment option, not a qa one"),
    (["eval", "r", "--task", "translate", "--baseline-runs", "r2"], "--baseline-runs is a chat option"),
    (["eval", "r", "--task", "chat", "--length-penalty", "0.5"], "--length-penalty is a translate option"),
    (["eval", "r", "--task", "chat", "--max-docs", "5"], "--max-docs is an option of eval --domains, not of --task"),
    (["eval", "r", "--task", "sentiment", "--no-probes"], "--probes is an option of eval --domains"),
    (["eval", "r", "--domains", "--limit", "5"], "--limit is an option of eval --task, not of --domains"),
    (["eval", "r", "--domains", "--beam-size", "2"], "--beam-size is an option of eval --task"),
    (["eval", "r", "--task", "translate", "--beam-size", "0"], "--beam-size must be at least 1 (1 = greedy), got 0"),
    (["eval", "r", "--task", "translate", "--length-penalty", "nan"], "--length-penalty must be a finite number"),
])
def test_an_option_of_another_task_is_one_line_before_any_work(tmp_path, args, fragment):
    proc = run_cli(*args, check=False, cwd=tmp_path)
    assert_clean_error(proc, fragment)
    assert list(tmp_path.iterdir()) == []



def test_a_translate_fine_tune_checks_its_test_beam_before_training(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"ni hao {i}\t你好{i}\n" for i in range(40)), encoding="utf-8")
    proc = run_cli("finetune", "--task", "translate", "--data", pairs, "--out", tmp_path / "o", "--beam-size", "0",
                   check=False)
    assert_clean_error(proc, "--beam-size must be at least 1")
    assert not (tmp_path / "o").exists()
