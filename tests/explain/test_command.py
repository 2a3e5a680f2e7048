"""`candorlm explain` as a user runs it."""

import json

from tests.conftest import assert_clean_error, run_cli


def test_explain_command_writes_outputs_and_reports(trained_run, tmp_path):
    out = tmp_path / "explain"
    proc = run_cli("explain", trained_run, "--prompt", "人民日报", "--target", "记者", "--method", "lens,ig",
                   "--out", out)
    text = proc.stdout + proc.stderr
    assert "target '记者' (given)" in text and "completeness error" in text
    assert {"lens.png", "attribution.png", "explain.html", "explain.json"} <= {p.name for p in out.iterdir()}
    doc = json.loads((trained_run / "evals" / "explain.json").read_text(encoding="utf-8"))
    assert doc["methods"] == ["lens", "ig"] and doc["target"] == "记者"
    assert "Example" in run_cli("explain", "--help").stdout


def test_explain_command_errors_are_clean(trained_run, tmp_path):
    assert_clean_error(run_cli("explain", trained_run, "--prompt", "中国", "--method", "lens,patching", "--out",
                               tmp_path, check=False), "needs --corrupt")
    assert_clean_error(run_cli("explain", trained_run, "--prompt", "中国", "--method", "heatmap", "--out", tmp_path,
                               check=False), "unknown --method heatmap")
    assert_clean_error(run_cli("explain", tmp_path / "nowhere", "--prompt", "中国", check=False), "not found")
