"""`candorlm finetune` as a hostile or unlucky user runs it: flags out of range, settings it would
ignore, data too small to split, options of another task, a run folder holding someone's notes.
Each is one line and exit 2, before any work, and nothing is written."""

import pytest

from candorlm.errors import CandorError
from candorlm.tasks import finetune
from candorlm.training.health import Health
from tests.conftest import assert_clean_error, run_cli
from tests.tasks.test_predict import QA, REVIEWS
from tests.tasks.test_tasks import FAST, TINY_SCRATCH, write_jsonl

TINY = [a for item in TINY_SCRATCH for a in ("--set", item)]


@pytest.fixture
def reviews(tmp_path):
    return write_jsonl(tmp_path / "reviews.jsonl", [{"text": f"{t}{i}", "label": lab}
                                                    for i, (t, lab) in enumerate(REVIEWS)])


@pytest.mark.parametrize("flags, fragment", [
    (["--epochs", "0"], "--epochs must be a finite number above 0"),
    (["--epochs", "-1"], "--epochs must be a finite number above 0"),
    (["--epochs", "nan"], "--epochs must be a finite number above 0"),
    (["--lr", "nan"], "--lr must be a finite number above 0"),
    (["--lr", "inf"], "--lr must be a finite number above 0"),
    (["--lr", "0"], "--lr must be a finite number above 0"),
    (["--batch-size", "0"], "--batch-size must be a finite number at least 1"),
    (["--threads", "0"], "--threads must be a finite number at least 1"),
    (["--seed", "-1"], "--seed must be a finite number at least 0"),
    (["--warmup-fraction", "2"], "--warmup-fraction is a share of the steps, from 0 to 1"),
    (["--warmup-fraction", "nan"], "--warmup-fraction must be a finite number"),
    (["--pretrain-mlm", "nan"], "--pretrain-mlm must be a finite number"),
    (["--mlm-weight", "nan", "--arch", "encoder"], "--mlm-weight must be a finite number"),
    (["--precision", "fp8"], "--precision fp8: choose one of auto, fp32, bf16"),
    (["--device", "tpu"], "--device tpu: choose one of auto, cpu, cuda"),
    (["--set", "train.lr=1e9"], "--set train.lr: finetune takes only model.* settings"),
    (["--set", "data.path=x"], "--set data.path: finetune takes only model.* settings"),
    (["--head", "span"], "--head is a qa and translate option, not a sentiment one"),
    (["--labels", "pos,neg,pos"], "--labels names a label twice"),
])
def test_bad_settings_are_one_line_before_any_work(reviews, tmp_path, flags, fragment):
    out = tmp_path / "run"
    proc = run_cli("finetune", "--task", "sentiment", "--data", reviews, "--out", out, *TINY, "--max-steps", "2",
                   "--threads", "1", *flags, check=False)
    assert_clean_error(proc, fragment)
    assert "use --lr" in proc.stderr if "train.lr" in fragment else True
    assert not out.exists()


@pytest.mark.slow
def test_data_too_small_to_split_is_one_line(tmp_path):
    few = write_jsonl(tmp_path / "few.jsonl", [{"text": f"好{i}", "label": "pos" if i % 2 else "neg"}
                                               for i in range(10)])
    with pytest.raises(CandorError, match="too few reviews to split"):
        finetune(None, task="sentiment", data=str(few), out=tmp_path / "s", overrides=TINY_SCRATCH, arch="encoder",
                 **FAST)
    one = write_jsonl(tmp_path / "one.jsonl", [QA[0]])
    with pytest.raises(CandorError, match="too few examples to split .* the test split is empty"):
        finetune(None, task="qa", data=str(one), out=tmp_path / "q", overrides=TINY_SCRATCH, tokenizer="char", **FAST)
    assert not (tmp_path / "s").exists() and not (tmp_path / "q").exists()


@pytest.mark.slow
def test_overwrite_never_deletes_notes_kept_in_a_run(reviews, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--task", "sentiment", "--data", reviews, "--out", out, *TINY, "--max-steps", "2",
            "--threads", "1", "--precision", "fp32", "--no-test"]
    run_cli(*args)
    run_cli(*args, "--overwrite")  # candorlm's own run: replaced
    (out / "README.md").write_text("what I tried")
    assert_clean_error(run_cli(*args, "--overwrite", check=False), "did not write there (README.md)", "Move them out")
    assert (out / "README.md").read_text() == "what I tried"


def test_a_finetune_that_diverges_does_not_point_at_resume():
    import torch

    guard = Health(torch.device("cpu"))
    guard.observe(3, torch.tensor(float("nan")), torch.tensor(1.0))
    kept = str(guard.error(3, lr=1e-3, grad_clip=1.0, precision="fp32", resumable=False))
    assert "--resume" not in kept and "--lr 0.001" in kept and "Nothing was written" in kept
    assert "--resume" in str(guard.error(3, lr=1e-3, grad_clip=1.0, precision="fp32"))
