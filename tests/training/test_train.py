import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from candorlm.errors import CandorError
from candorlm.lm import load
from candorlm.pretrain import train
from candorlm.checkpoint.retention import list_checkpoints
from tests.conftest import TINY_MODEL, TINY_TRAIN

pytestmark = pytest.mark.slow  # every test here trains


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_loss_goes_down_and_run_dir_is_complete(trained_run):
    by_step = losses(trained_run)
    first, last = by_step[1], by_step[30]
    assert last < first - 0.4
    for name in ("config.toml", "tokenizer.json", "model.safetensors", "metrics.jsonl"):
        assert (trained_run / name).is_file()
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_bpb" in r]
    assert evals[-1]["val_bpb"] < evals[0]["val_bpb"]
    assert {"tokens_per_s", "lr", "grad_norm", "peak_rss_mb"} <= set(rows[-1])
    assert [p.name for p in list_checkpoints(trained_run / "checkpoints")] == ["step-000025", "step-000030"]


def test_resume_is_exact_in_fp32(tmp_path, data_dir):
    full = tmp_path / "full"
    train(full, data=data_dir, model=TINY_MODEL, max_steps=12, **TINY_TRAIN)
    part = tmp_path / "part"
    # Stop after step 5 (its checkpoint), as a kill would; then resume with the full budget.
    train(part, data=data_dir, model=TINY_MODEL, max_steps=12, **dict(TINY_TRAIN, keep_checkpoints=9))
    for ckpt in list_checkpoints(part / "checkpoints"):
        if ckpt.name != "step-000005":
            shutil.rmtree(ckpt)
    (part / "model.safetensors").unlink()
    train(part, data=data_dir, model=TINY_MODEL, max_steps=12, resume=True, **TINY_TRAIN)
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 13))
    assert all(a[s] == b[s] for s in range(1, 13)), (a, b)


def test_refuses_to_clobber_a_run(tmp_path, data_dir, trained_run):
    with pytest.raises(CandorError, match="already holds a run"):
        train(trained_run, data=data_dir, model=TINY_MODEL, max_steps=2, **TINY_TRAIN)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("important")
    with pytest.raises(CandorError, match="was not written by candorlm"):
        train(other, data=data_dir, model=TINY_MODEL, max_steps=2, overwrite=True, **TINY_TRAIN)
    assert (other / "keep.txt").read_text() == "important"


def test_resume_with_a_different_model_is_refused(data_dir, trained_run):
    with pytest.raises(CandorError, match="different model"):
        train(trained_run, data=data_dir, model=dict(TINY_MODEL, n_layers=3), max_steps=40, resume=True, **TINY_TRAIN)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, data_dir):
    run = tmp_path / "r"
    train(run, data=data_dir, model=TINY_MODEL, max_steps=5, **TINY_TRAIN)
    weights = list_checkpoints(run / "checkpoints")[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CandorError, match="corrupt"):
        train(run, data=data_dir, model=TINY_MODEL, max_steps=8, resume=True, **TINY_TRAIN)
    weights.write_bytes(bytes(data[:50]))
    with pytest.raises(CandorError, match="corrupt"):
        train(run, data=data_dir, model=TINY_MODEL, max_steps=8, resume=True, **TINY_TRAIN)


def test_pickle_in_place_of_weights_is_refused_without_running_it(tmp_path, trained_run):
    run = tmp_path / "evil"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (run / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CandorError, match="does not match .*SHA256SUMS"):  # checked before it is read
        load(run)
    with pytest.raises(CandorError, match="never loads pickle"):  # and unchecked, still never unpickled
        load(run, verify=False)
    assert not marker.exists()


def _cli(*args):
    return [sys.executable, "-m", "candorlm", *args]


def _train_args(data_dir, out, steps):
    sets = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    sets += [f"--set=train.{k}={json.dumps(v)}" for k, v in TINY_TRAIN.items() if k != "save_every"]
    return _cli("train", "--data", str(data_dir), "--out", str(out), "--max-steps", str(steps),
                "--save-every", "1", *sets)


def _wait_for_checkpoints(run, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = list_checkpoints(run / "checkpoints")
        if found and int(found[-1].name[5:]) >= step:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint {step} appeared: exit {proc.poll()}")


def test_kill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, data_dir):
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_args(data_dir, run, 100000), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoints(run, 4, proc)
        time.sleep(0.13)  # somewhere inside a step or a save
    finally:
        proc.kill()
        proc.wait()
    found = list_checkpoints(run / "checkpoints")
    assert found
    lm = load(run)  # newest complete checkpoint
    assert lm.generate("中国", max_new_tokens=3, greedy=True) is not None
    result = train(run, data=data_dir, model=TINY_MODEL, max_steps=int(found[-1].name[5:]) + 2, resume=True,
                   **dict(TINY_TRAIN, save_every=1))
    assert result.steps == int(found[-1].name[5:]) + 2


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, data_dir):
    run = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_args(data_dir, run, 100000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_checkpoints(run, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out + err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = list_checkpoints(run / "checkpoints")[-1]
    assert int(last.name[5:]) == rows[-1]["step"]


def test_a_diverged_training_stops_at_the_first_non_finite_loss(tmp_path, data_dir):
    """`--set train.lr=1000 --set train.grad_clip=0` once trained to the end and wrote NaN weights,
    rc 0. Now: rc 2, one line naming the step and the likely causes, no model, and the newest
    checkpoint (saved before the divergence) holds finite weights and resumes."""
    run = tmp_path / "diverged"
    sets = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    sets += [f"--set=train.{k}={json.dumps(v)}" for k, v in dict(TINY_TRAIN, save_every=1).items()]
    proc = subprocess.run([sys.executable, "-m", "candorlm", "train", "--data", str(data_dir), "--out", str(run),
                           "--max-steps", "30", *sets, "--set", "train.lr=1000", "--set", "train.grad_clip=0"],
                          capture_output=True, text=True, env=dict(os.environ, CANDORLM_PROGRESS="0", COLUMNS="200"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    text = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and "training diverged at step" in text
    assert "train.lr=1000" in text and "train.grad_clip=0" in text
    assert not (run / "model.safetensors").exists()
    step = int(text.split("training diverged at step ")[1].split(":")[0])
    saved = list_checkpoints(run / "checkpoints")
    assert all(int(c.name[5:]) < step for c in saved)
    if saved:  # the last good one loads (finite weights) and resumes
        from safetensors.torch import load_file
        import torch

        assert all(torch.isfinite(t).all() for t in load_file(saved[-1] / "model.safetensors").values())


def test_generation_refuses_non_finite_weights(tmp_path, trained_run):
    from safetensors.torch import load_file, save_file

    from candorlm.io.manifest import write_manifest

    run = tmp_path / "nan-run"
    shutil.copytree(trained_run, run)
    weights = load_file(run / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, run / "model.safetensors")
    write_manifest(run)  # an honest manifest: the weights themselves are the problem
    with pytest.raises(CandorError, match="non-finite weights"):
        load(run)


def test_an_interrupted_overwrite_keeps_the_run_it_was_replacing(tmp_path, data_dir):
    """Ctrl-C saves the new run (resumable), so it stays; the complete run it was replacing once
    went with it. Now it is kept whole beside it, under a visible name the next command leaves alone."""
    run = tmp_path / "run"
    train(run, data=data_dir, model=TINY_MODEL, max_steps=2, **TINY_TRAIN)
    weights = (run / "model.safetensors").read_bytes()
    proc = subprocess.Popen([*_train_args(data_dir, run, 100000), "--overwrite"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoints(run, 3, proc)  # past the old run's last step: the new run's own checkpoint
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = tmp_path / "run.replaced"
    assert (kept / "model.safetensors").read_bytes() == weights
    assert "kept whole in" in " ".join((out + err).split())
    assert list_checkpoints(run / "checkpoints")  # the new run: resumable where it was
    train(tmp_path / "next", data=data_dir, model=TINY_MODEL, max_steps=1, **TINY_TRAIN)  # sweeps the folder
    assert (kept / "model.safetensors").read_bytes() == weights


def test_resume_never_rewrites_a_backup_and_a_file_as_out_is_one_line(tmp_path, trained_run, data_dir):
    from candorlm.privacy.integrity import backup

    copy = tmp_path / "bak"
    backup(trained_run, copy)
    before = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*"))
    with pytest.raises(CandorError, match="holds candorlm backup output, not a run"):
        train(copy, data=data_dir, model=TINY_MODEL, max_steps=40, resume=True, **TINY_TRAIN)
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*")) == before
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(CandorError, match="is a file, not a directory"):
        train(notes, data=data_dir, model=TINY_MODEL, max_steps=1, **TINY_TRAIN)
    assert notes.read_text() == "mine"
