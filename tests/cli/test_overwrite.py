"""candorlm deletes only what it wrote: every --overwrite target of issue 14 is refused through
the real command line (exit 2, one line, nothing touched), and candorlm's own output is replaced
only once the new one is complete.

The tests of candorlm.io's overwrite rules live here too: a test folder named `io` would shadow
the standard library's `io` while tests/ is not a package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from candorlm.errors import CandorError
from candorlm.io.files import swapped_into_place, temp_path
from candorlm.io.outputs import MARKER, claim_dir, claim_file, claim_folder, read_marker, record_file, write_marker
from candorlm.rundir import looks_like_old_run
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.conftest import assert_clean_error, run_cli

pytestmark = pytest.mark.slow  # real subprocesses: prepare, train, interrupts

KEY_HEX = "0123456789abcdef" * 4
TRAIN_ARGS = [*(f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()),
              *(f"--set=train.{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in TINY_TRAIN.items()),
              "--max-steps", "2"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) and its sha256: 'nothing was touched'."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def home(tmp_path) -> Path:
    """home/project/notes.txt (200 short paragraphs) and an unrelated home/other/keep.txt."""
    root = tmp_path / "home"
    (root / "project").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "other" / "keep.txt").write_text("not candorlm's\n")
    (root / "project" / "notes.txt").write_text("\n\n".join(f"第{i}段：今天天气很好，我们去公园。" for i in range(200)))
    return root


def key_file(where: Path) -> Path:
    key = where / "k.key"
    key.write_text(KEY_HEX + "\n")
    key.chmod(0o600)
    return key


# ---------------------------------------------------------------- issue 14's cases, through the CLI


def test_prepare_out_parent_is_refused_and_home_untouched(home):
    before = snapshot(home)
    proc = run_cli("prepare", "notes.txt", "--out", "..", "--tokenizer", "char", "--overwrite",
                   cwd=home / "project", check=False)
    assert_clean_error(proc, "refusing to replace ..", "holds the working directory")
    assert snapshot(home) == before


def test_prepare_out_dot_is_refused(home):
    before = snapshot(home)
    proc = run_cli("prepare", "notes.txt", "--out", ".", "--tokenizer", "char", "--overwrite",
                   cwd=home / "project", check=False)
    assert_clean_error(proc, "is the working directory")
    assert snapshot(home) == before


def test_encrypt_into_the_working_directory_is_refused(home):
    project = home / "project"
    (project / "secret.txt").write_text("my secret\n")
    (project / "unrelated.txt").write_text("unrelated\n")
    key = key_file(home)
    before = snapshot(home)
    proc = run_cli("encrypt", "secret.txt", "-o", ".", "--key-file", key, "--overwrite", cwd=project, check=False)
    assert_clean_error(proc, "is the working directory")
    assert snapshot(home) == before


def test_prepare_overwrite_of_a_folder_of_user_files_is_refused(home, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    before = snapshot(mine)
    proc = run_cli("prepare", home / "project" / "notes.txt", "--out", mine, "--tokenizer", "char", "--overwrite",
                   check=False)
    assert_clean_error(proc, "was not written by candorlm", ".candorlm.json")
    assert snapshot(mine) == before


def test_train_overwrite_of_a_foreign_config_and_thesis_is_refused(tmp_path, data_dir):
    other = tmp_path / "other-tool"
    other.mkdir()
    (other / "config.toml").write_text("[tool]\nname = 'not candorlm'\n")
    (other / "thesis.docx").write_text("years of work")
    before = snapshot(other)
    proc = run_cli("train", "--data", data_dir, "--out", other, "--overwrite", *TRAIN_ARGS, check=False)
    assert_clean_error(proc, "was not written by candorlm")
    assert snapshot(other) == before


def test_train_overwrite_of_the_run_holding_its_own_data_is_refused(tmp_path, trained_run, data_dir):
    old = tmp_path / "oldrun"
    shutil.copytree(trained_run, old)
    shutil.copytree(data_dir, old / "data")
    before = snapshot(old)
    proc = run_cli("train", "--data", old / "data", "--out", old, "--overwrite", *TRAIN_ARGS, check=False)
    assert_clean_error(proc, "holds the input")
    assert snapshot(old) == before


def test_the_home_directory_is_refused(home, tmp_path):
    before = snapshot(home)
    env_home = {"HOME": str(home)}
    proc = run_cli_env(env_home, "prepare", home / "project" / "notes.txt", "--out", home, "--tokenizer", "char",
                       "--overwrite", cwd=tmp_path)
    assert_clean_error(proc, "is your home directory")
    proc = run_cli_env(env_home, "prepare", home / "project" / "notes.txt", "--out", home.parent, "--tokenizer",
                       "char", "--overwrite", cwd=tmp_path)
    assert_clean_error(proc, "holds your home directory")
    assert snapshot(home) == before


def run_cli_env(env: dict[str, str], *args, cwd: Path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "candorlm", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "CANDORLM_PROGRESS": "0", "COLUMNS": "200", **env})


def test_a_symlink_to_the_working_directory_is_refused(home):
    project = home / "project"
    (home / "link").symlink_to(project)
    before = snapshot(project)
    proc = run_cli("prepare", "notes.txt", "--out", "../link", "--tokenizer", "char", "--overwrite", cwd=project,
                   check=False)
    assert_clean_error(proc, "is the working directory")
    assert snapshot(project) == before


def test_candorlm_output_of_another_kind_is_refused(tmp_path, trained_run, corpus_file):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    proc = run_cli("prepare", corpus_file, "--out", run, "--tokenizer", "char", "--overwrite", check=False)
    assert_clean_error(proc, "holds candorlm run output, not data")
    assert snapshot(run) == before


def test_single_files_scrub_decrypt_encrypt(tmp_path, home):
    notes = home / "project" / "notes.txt"
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("years of work")
    proc = run_cli("scrub", notes, "-o", thesis, "--overwrite", check=False)
    assert_clean_error(proc, "was not written by candorlm")
    assert thesis.read_text() == "years of work"
    out = tmp_path / "clean.txt"
    run_cli("scrub", notes, "-o", out)
    run_cli("scrub", notes, "-o", out, "--overwrite")  # candorlm's own output: replaced
    out.write_text(out.read_text() + "my edits\n")  # changed since: no longer candorlm's to replace
    assert_clean_error(run_cli("scrub", notes, "-o", out, "--overwrite", check=False), "changed since")
    assert_clean_error(run_cli("scrub", notes, "-o", notes, "--overwrite", check=False), "is the input")

    key = key_file(tmp_path)
    enc = tmp_path / "notes.enc"
    run_cli("encrypt", notes, "-o", enc, "--key-file", key)
    assert_clean_error(run_cli("decrypt", enc, "-o", thesis, "--key-file", key, "--overwrite", check=False),
                       "was not written by candorlm")
    assert thesis.read_text() == "years of work"
    assert_clean_error(run_cli("encrypt", notes, "-o", thesis, "--key-file", key, "--overwrite", check=False),
                       "was not written by candorlm")
    run_cli("encrypt", notes, "-o", enc, "--key-file", key, "--overwrite")  # an encrypted file is recognised
    dec = tmp_path / "notes.dec"
    run_cli("decrypt", enc, "-o", dec, "--key-file", key)
    run_cli("decrypt", enc, "-o", dec, "--key-file", key, "--overwrite")
    assert dec.read_bytes() == notes.read_bytes()


def test_scrub_report_never_replaces_a_users_file_and_is_checked_before_the_work(tmp_path, home):
    notes = home / "project" / "notes.txt"
    before = snapshot(home)
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("years of work")
    out = tmp_path / "clean.txt"
    # the report is claimed before the scrub: no output is written when the report would be refused
    assert_clean_error(run_cli("scrub", notes, "-o", out, "--report", thesis, check=False), "already exists")
    assert_clean_error(run_cli("scrub", notes, "-o", out, "--report", thesis, "--overwrite", check=False),
                       "was not written by candorlm")
    assert_clean_error(run_cli("scrub", notes, "-o", out, "--report", notes, "--overwrite", check=False),
                       "is the input")
    assert_clean_error(run_cli("scrub", notes, "-o", out, "--report", out, check=False), "a file name of its own")
    assert thesis.read_text() == "years of work" and not out.exists() and snapshot(home) == before
    report = tmp_path / "report.json"
    run_cli("scrub", notes, "-o", out, "--report", report)
    assert json.loads(report.read_text(encoding="utf-8"))["documents"] == 200
    run_cli("scrub", notes, "-o", out, "--report", report, "--overwrite")  # candorlm's own report: replaced
    report.write_text("my notes on the report")
    assert_clean_error(run_cli("scrub", notes, "-o", out, "--report", report, "--overwrite", check=False),
                       "changed since")
    assert report.read_text() == "my notes on the report"


def test_explain_writes_only_into_a_new_empty_or_its_own_folder(tmp_path, trained_run):
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "explain.html").write_text("my own page")
    proc = run_cli("explain", trained_run, "--prompt", "人民日报", "--method", "lens", "--out", papers, check=False)
    assert_clean_error(proc, "files candorlm did not write", "new or empty folder")
    assert [p.name for p in papers.iterdir()] == ["explain.html"]
    assert (papers / "explain.html").read_text() == "my own page"
    out = tmp_path / "explain-out"
    run_cli("explain", trained_run, "--prompt", "人民日报", "--method", "lens", "--out", out)
    assert read_marker(out)["kind"] == "explain" and (out / "lens.png").is_file()
    run_cli("explain", trained_run, "--prompt", "人民日报", "--method", "lens", "--out", out)  # its own: again
    assert_clean_error(run_cli("explain", trained_run, "--prompt", "人民日报", "--out", trained_run, check=False),
                       "holds candorlm run output")
    # a typo in the run's path creates nothing
    assert_clean_error(run_cli("explain", tmp_path / "typo", "--prompt", "中国", check=False), "not found")
    assert not (tmp_path / "typo").exists()


def test_claim_folder(tmp_path):
    claim_folder(tmp_path / "new", "explain", "candorlm explain")  # new: taken, and nothing created
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    claim_folder(tmp_path / "empty", "explain", "candorlm explain")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CandorError, match="is a file, not a folder"):
        claim_folder(tmp_path / "a-file", "explain", "candorlm explain")
    old = tmp_path / "old"
    old.mkdir()
    (old / "explain.json").write_text("{}")
    (old / "lens.png").write_bytes(b"png")
    with pytest.raises(CandorError, match="did not write there"):
        claim_folder(old, "explain", "candorlm explain")  # without a legacy rule, no marker is no claim
    claim_folder(old, "explain", "candorlm explain", legacy=lambda f: (f / "explain.json").is_file())
    write_marker(tmp_path / "sweep", "sweep", "candorlm sweep")
    with pytest.raises(CandorError, match="holds candorlm sweep output"):
        claim_folder(tmp_path / "sweep", "explain", "candorlm explain")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(CandorError, match="symbolic link"):
        claim_folder(tmp_path / "link", "explain", "candorlm explain")


def test_backup_finetune_import_export_and_sweep_refuse_foreign_folders(tmp_path, trained_run, data_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    before = snapshot(mine)
    for args in (["backup", trained_run, mine, "--overwrite"],
                 ["finetune", trained_run, "--task", "sentiment", "--data", "builtin:reviews", "--out", mine,
                  "--overwrite"],
                 ["import", trained_run, "--out", mine, "--overwrite"],
                 ["export", trained_run, "--out", mine, "--overwrite"],
                 ["sweep", "--data", data_dir, "--out", mine, "--overwrite"]):
        assert_clean_error(run_cli(*args, check=False), "was not written by candorlm")
    assert snapshot(mine) == before
    # a user's own Hugging Face model (the file names `save_pretrained` writes) and a folder that
    # happens to hold a sweep.json look like candorlm's unmarked output, but are not
    model = tmp_path / "my-model"
    model.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "special_tokens_map.json", "tokenizer_config.json"):
        (model / name).write_text("theirs")
    results = tmp_path / "results"
    results.mkdir()
    (results / "sweep.json").write_text("{}")
    (results / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    assert_clean_error(run_cli("export", trained_run, "--out", model, "--overwrite", check=False),
                       "was not written by candorlm")
    assert_clean_error(run_cli("sweep", "--data", data_dir, "--out", results, "--overwrite", check=False),
                       "was not written by candorlm")
    assert snapshot(tmp_path) == before


def test_own_output_is_replaced_and_carries_its_marker(tmp_path, corpus_file, data_dir, trained_run):
    data = tmp_path / "data"
    run_cli("prepare", corpus_file, "--out", data, "--tokenizer", "char")
    assert read_marker(data)["kind"] == "data"
    assert_clean_error(run_cli("prepare", corpus_file, "--out", data, "--tokenizer", "char", check=False),
                       "already exists", "--overwrite")
    run_cli("prepare", corpus_file, "--out", data, "--tokenizer", "char", "--overwrite")
    assert read_marker(data)["kind"] == "data"
    # A run made before markers existed (no .candorlm.json) is recognised by its layout.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / MARKER).unlink()
    assert looks_like_old_run(run)
    run_cli("train", "--data", data_dir, "--out", run, "--overwrite", *TRAIN_ARGS)
    assert read_marker(run)["kind"] == "run" and "ledger.json" in os.listdir(run)
    assert not [p for p in tmp_path.iterdir() if ".candorlm-tmp-" in p.name]  # the old run is gone
    for ours in (data_dir, trained_run):  # the session fixtures were made by candorlm too
        assert read_marker(ours) is not None


# ---------------------------------------------------------------- the rules themselves (candorlm.io)


def test_claim_dir_refuses_the_filesystem_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CandorError, match="filesystem root"):
        claim_dir(Path("/"), "data", overwrite=True)


def test_legacy_run_rule_wants_candorlm_files_only(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert looks_like_old_run(run)
    (run / "thesis.docx").write_text("x")
    assert not looks_like_old_run(run)
    (run / "thesis.docx").unlink()
    (run / "config.toml").write_text("[tool]\n")
    assert not looks_like_old_run(run)


def test_replacement_is_build_then_swap(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with swapped_into_place(dest) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("the build failed")
    assert os.listdir(dest) == ["old.txt"] and os.listdir(tmp_path) == ["out"]
    with swapped_into_place(dest) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (dest / "old.txt").is_file()  # the old one stays until the new one is complete
    assert os.listdir(dest) == ["new.txt"] and os.listdir(tmp_path) == ["out"]


def test_a_killed_swap_puts_the_old_output_back(tmp_path):
    # Killed between setting the old one aside and renaming the new one in: the next writer restores it.
    dest = tmp_path / "out"
    aside = temp_path(dest, "old", pid=2**22 + 12345)  # above pid_max: a dead writer
    aside.mkdir()
    (aside / "old.txt").write_text("old")
    claim_dir(tmp_path / "elsewhere", "data", overwrite=False)
    assert (dest / "old.txt").read_text() == "old" and not aside.exists()


def test_claim_file_follows_the_record(tmp_path):
    out = tmp_path / "clean.txt"
    out.write_text("mine")
    with pytest.raises(CandorError, match="was not written by candorlm"):
        claim_file(out, "scrubbed", overwrite=True)
    record_file(out, "scrubbed", "test")
    assert claim_file(out, "scrubbed", overwrite=True)
    with pytest.raises(CandorError, match="was not written by candorlm"):
        claim_file(out, "decrypted", overwrite=True)  # another kind


def test_tokenizer_train_never_overwrites_a_users_file(tmp_path, home):
    notes = home / "project" / "notes.txt"
    mine = tmp_path / "tok.json"
    mine.write_text("my own notes, not a tokenizer")
    assert_clean_error(run_cli("tokenizer", "train", notes, "--out", mine, "--kind", "char", check=False),
                       "already exists", "--overwrite")
    assert_clean_error(run_cli("tokenizer", "train", notes, "--out", mine, "--kind", "char", "--overwrite",
                               check=False), "was not written by candorlm")
    assert mine.read_text() == "my own notes, not a tokenizer"
    ours = tmp_path / "ours.json"
    run_cli("tokenizer", "train", notes, "--out", ours, "--kind", "char")
    run_cli("tokenizer", "train", notes, "--out", ours, "--kind", "char", "--overwrite")


def test_outputs_inside_an_input_folder_or_an_encrypted_tree_are_refused(tmp_path, home):
    notes = home / "project"
    before = snapshot(home)
    assert_clean_error(run_cli("scrub", notes, "-o", notes / "clean.txt", check=False), "lies inside the input")
    assert_clean_error(run_cli("prepare", notes, "--out", notes / "data", "--tokenizer", "char", check=False),
                       "lies inside the input")
    assert snapshot(home) == before
    key = key_file(tmp_path)
    enc = tmp_path / "notes.enc"
    run_cli("encrypt", notes, "-o", enc, "--key-file", key)
    sealed = snapshot(enc)
    member = enc / "notes.txt"
    assert_clean_error(run_cli("decrypt", member, "-o", enc / "notes.plain.txt", "--key-file", key, check=False),
                       "lies inside the encrypted tree")
    assert_clean_error(run_cli("decrypt", enc, "-o", enc / "plain", "--key-file", key, check=False),
                       "lies inside the encrypted tree")
    assert_clean_error(run_cli("scrub", home / "other", "-o", enc / "clean.txt", check=False),
                       "lies inside the encrypted tree")
    # an encrypted file candorlm did not record (a member of a tree, another key's file) is not replaced
    (tmp_path / "k2").mkdir()
    other = key_file(tmp_path / "k2")
    loose = tmp_path / "loose.enc"
    loose.write_bytes(member.read_bytes())
    assert_clean_error(run_cli("encrypt", home / "other" / "keep.txt", "-o", loose, "--key-file", other,
                               "--overwrite", check=False), "was not written by candorlm")
    assert snapshot(enc) == sealed and loose.read_bytes() == member.read_bytes()
    run_cli("decrypt", enc, "-o", tmp_path / "back", "--key-file", key)  # the tree still decrypts


def test_paths_that_cannot_be_made_are_one_line_before_any_work(tmp_path, home):
    notes = home / "project" / "notes.txt"
    for args in (["scrub", notes, "-o", notes / "clean.txt"],
                 ["tokenizer", "train", notes, "--out", notes / "tok.json", "--kind", "char"],
                 ["prepare", notes, "--out", notes / "data", "--tokenizer", "char"],
                 ["keygen", "-o", notes / "k.key"]):
        proc = run_cli(*args, check=False)
        assert_clean_error(proc)
        assert "is a file" in " ".join(proc.stderr.split()) or "not a folder" in " ".join(proc.stderr.split()), args
    assert notes.is_file()
    # where the file system itself says no (here /proc: no new folders), one line and exit 2, not "a bug"
    assert_clean_error(run_cli("prepare", notes, "--out", "/proc/candorlm-x/data", "--tokenizer", "char", check=False))
