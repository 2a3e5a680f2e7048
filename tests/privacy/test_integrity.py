"""Manifests, verify, verified backups and the checkpoint retention policy."""

import json
import shutil
import subprocess

import pytest

from candorlm.errors import CandorError
from candorlm.io.manifest import MANIFEST_NAME, read_manifest, verify_manifest
from candorlm.privacy.integrity import backup, verify
from candorlm.checkpoint.retention import best_checkpoint, list_checkpoints, retain
from tests.conftest import assert_clean_error, run_cli


def test_prepare_and_train_write_manifests_that_verify(data_dir, trained_run):
    for root in (data_dir, trained_run):
        entries = read_manifest(root)
        assert "meta.json" in entries or "model.safetensors" in entries
        assert verify_manifest(root).ok
    assert "checkpoints/step-000030/model.safetensors" in read_manifest(trained_run)
    # the manifest is sha256sum's format
    proc = subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST_NAME], cwd=data_dir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_verify_names_changed_missing_and_extra_files(tmp_path, data_dir):
    copy = tmp_path / "d"
    shutil.copytree(data_dir, copy)
    (copy / "notes.txt").write_text("added later")
    report = verify(copy)
    assert report.ok and report.extra == ["notes.txt"]
    shard = sorted(copy.glob("train_*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[7] ^= 1
    shard.write_bytes(bytes(data))
    (copy / "meta.json").unlink()
    with pytest.raises(CandorError, match=f"changed: {shard.name}") as err:
        verify(copy)
    assert "missing: meta.json" in str(err.value)
    assert_clean_error(run_cli("verify", copy, check=False), "changed", shard.name)
    run_cli("verify", copy, "--update")
    assert "OK" in run_cli("verify", copy).stderr


def test_backup_is_a_verified_copy(tmp_path, trained_run):
    dest = tmp_path / "backups" / "run"
    report = backup(trained_run, dest)
    assert report.ok and report.checked == len(read_manifest(trained_run))
    assert (dest / "model.safetensors").read_bytes() == (trained_run / "model.safetensors").read_bytes()
    with pytest.raises(CandorError, match="already exists"):
        backup(trained_run, dest)
    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    (broken / "config.toml").write_text("[model]\n")
    with pytest.raises(CandorError, match="changed: config.toml"):
        backup(broken, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_manifest_refuses_paths_outside(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("0" * 64 + "  ../etc/passwd\n")
    with pytest.raises(CandorError, match="outside the directory"):
        verify(tmp_path)


def _fake_checkpoint(root, step, val_loss):
    path = root / f"step-{step:06d}"
    path.mkdir(parents=True)
    state = {"step": step} if val_loss is None else {"step": step, "val_loss": val_loss}
    (path / "state.json").write_text(json.dumps(state))
    return path


def test_retention_keeps_last_n_and_best(tmp_path):
    ckpts = tmp_path / "checkpoints"
    losses = {10: 3.0, 20: 2.1, 30: 2.5, 40: None, 50: 2.7}
    for step, loss in losses.items():
        _fake_checkpoint(ckpts, step, loss)
    assert best_checkpoint(ckpts).name == "step-000020"
    kept = retain(ckpts, keep_last=2, keep_best=True)
    assert [p.name for p in kept] == ["step-000020", "step-000040", "step-000050"]
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000020", "step-000040", "step-000050"]
    assert [p.name for p in retain(ckpts, keep_last=1, keep_best=False)] == ["step-000050"]


def test_training_keeps_the_best_checkpoint(trained_run):
    kept = list_checkpoints(trained_run / "checkpoints")
    best = best_checkpoint(trained_run / "checkpoints")
    assert best in kept and kept[-1].name == "step-000030"
    states = [json.loads((p / "state.json").read_text()) for p in kept]
    assert all("val_loss" in s for s in states)  # eval_every = save_every in the fixture


def test_verify_update_never_replaces_checksums_candorlm_did_not_write(tmp_path):
    download = tmp_path / "download"
    download.mkdir()
    (download / "a.txt").write_text("a")
    theirs = "# checksums from the publisher\n" + "0" * 64 + "  a.txt\n"
    (download / MANIFEST_NAME).write_text(theirs)
    assert_clean_error(run_cli("verify", download, "--update", check=False), "did not write")
    assert (download / MANIFEST_NAME).read_text() == theirs
    mine = tmp_path / "mine"  # a folder with no SHA256SUMS: a new one replaces nothing
    mine.mkdir()
    (mine / "b.txt").write_text("b")
    run_cli("verify", mine, "--update")
    assert verify(mine).checked == 1


def test_backup_writes_nothing_into_the_source_and_names_what_it_skips(tmp_path, caplog):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"jpeg")
    (photos / ".secret").write_text("hidden")
    (photos / "sub" / ".env").write_text("hidden deeper")
    before = sorted(p.name for p in photos.iterdir())
    with caplog.at_level("WARNING", logger="candorlm"):
        report = backup(photos, tmp_path / "bak")
    assert sorted(p.name for p in photos.iterdir()) == before  # no SHA256SUMS written into the source
    assert report.checked == 1 and (tmp_path / "bak" / "a.jpg").read_bytes() == b"jpeg"
    assert verify(tmp_path / "bak").ok and "2 hidden entries" in caplog.text
    assert ".secret" in caplog.text and "sub/.env" in caplog.text


def test_a_backup_of_a_backup_says_what_it_is_a_backup_of(tmp_path, trained_run):
    from candorlm.io.outputs import read_marker

    backup(trained_run, tmp_path / "one")
    backup(tmp_path / "one", tmp_path / "two")
    assert read_marker(tmp_path / "one")["of"] == read_marker(tmp_path / "two")["of"] == "run"
