"""The command line as a user runs it: real subprocesses, real files, clear errors, no tracebacks."""

import json

import pytest

from tests.conftest import TINY_MODEL, assert_clean_error, run_cli


@pytest.mark.slow
def test_help_has_examples():
    for cmd in ("prepare", "train", "generate", "export", "demo"):
        out = run_cli(cmd, "--help").stdout
        assert "Example" in out and "candorlm" in out


@pytest.mark.slow
def test_end_to_end_prepare_train_generate_export(tmp_path, corpus_file):
    data, run, hf = tmp_path / "data", tmp_path / "run", tmp_path / "hf"
    out = run_cli("prepare", corpus_file, "--out", data, "--tokenizer", "char", "--vocab-size", "600")
    assert "training and" in out.stderr + out.stdout
    sets = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    run_cli("train", "--data", data, "--out", run, "--max-steps", "6", "--eval-every", "3", "--save-every", "3",
            "--seed", "1", *sets)
    assert (run / "model.safetensors").is_file()
    gen = run_cli("generate", run, "--prompt", "中国", "--max-new-tokens", "8", "--greedy")
    assert gen.stderr.strip() == "" or "Traceback" not in gen.stderr
    assert len(gen.stdout.strip()) > 0 and "INFO" not in gen.stdout
    sampled = [run_cli("generate", run, "--prompt", "中国", "--max-new-tokens", "8", "--temperature", "0.8",
                       "--top-k", "5", "--top-p", "0.9", "--seed", "3").stdout for _ in range(2)]
    assert sampled[0] == sampled[1]
    batch = run_cli("generate", run, "--prompt", "中国", "--prompt", "经济", "--max-new-tokens", "4", "--greedy")
    assert len(batch.stdout.splitlines()) == 2
    run_cli("export", run, "--format", "hf", "--out", hf)
    assert json.loads((hf / "config.json").read_text())["model_type"] == "llama"
    run_cli("import", hf, "--out", tmp_path / "back")
    again = run_cli("generate", tmp_path / "back", "--prompt", "中国", "--max-new-tokens", "8", "--greedy")
    assert again.stdout == gen.stdout


@pytest.mark.slow
def test_prepare_reports_gbk(tmp_path):
    f = tmp_path / "gbk.txt"
    f.write_bytes(("人民日报发表社论。\n\n" * 30 + "新年快乐。\n\n中国经济。\n\n" * 30).encode("gbk"))
    out = run_cli("prepare", f, "--out", tmp_path / "d", "--vocab-size", "300", "--val-fraction", "0.4")
    assert "GB18030" in out.stdout + out.stderr


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "vocab", "config_key", "seq_len", "no_data",
                                  "run_exists", "bad_run", "bad_preset"])
def test_bad_input_is_a_clear_error(case, tmp_path, data_dir, trained_run):
    if case == "missing":
        assert_clean_error(run_cli("prepare", tmp_path / "nope.txt", "--out", tmp_path / "d", check=False),
                           "not found")
    elif case == "empty":
        (tmp_path / "e.txt").write_text("\n\n")
        assert_clean_error(run_cli("prepare", tmp_path / "e.txt", "--out", tmp_path / "d", "--vocab-size", "300",
                                   check=False), "empty")
        assert not (tmp_path / "d").exists()
    elif case == "binary":
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "x.txt").write_bytes(b"\x00\xff" * 50)
        assert_clean_error(run_cli("prepare", tmp_path / "b", "--out", tmp_path / "d", check=False),
                           "skipped as binary")
    elif case == "vocab":
        assert_clean_error(run_cli("prepare", "builtin:python-docs", "--out", tmp_path / "d", "--vocab-size", "100",
                                   check=False), "too small")
    elif case == "config_key":
        cfg = tmp_path / "c.toml"
        cfg.write_text("[train]\nlearnin_rate = 1\n")
        assert_clean_error(run_cli("train", "--data", data_dir, "--out", tmp_path / "r", "--config", cfg, check=False),
                           "unknown config key 'train.learnin_rate'", "Valid keys in [train]:")
    elif case == "seq_len":
        assert_clean_error(run_cli("train", "--data", data_dir, "--out", tmp_path / "r", "--set", "train.seq_len=4096",
                                   check=False), "above the model's maximum")
    elif case == "no_data":
        assert_clean_error(run_cli("train", "--data", tmp_path, "--out", tmp_path / "r", check=False),
                           "not a prepared data directory")
    elif case == "run_exists":
        assert_clean_error(run_cli("train", "--data", data_dir, "--out", trained_run, check=False),
                           "--resume", "--overwrite")
    elif case == "bad_run":
        assert_clean_error(run_cli("generate", tmp_path, "--prompt", "x", check=False), "not a candorlm run")
    elif case == "bad_preset":
        assert_clean_error(run_cli("train", "--data", data_dir, "--out", tmp_path / "r", "--preset", "huge",
                                   check=False), "unknown preset 'huge'", "tiny")


def test_an_os_error_is_one_line_path_errors_exit_2_others_exit_1(monkeypatch, capsys, tmp_path):
    """A path the file system refuses is the user's to fix (exit 2); any other OSError is a bug
    (exit 1). Both one line, never a traceback (an OSError without a file name once re-raised)."""
    import errno
    import os

    from candorlm.cli import main

    def raises(error):
        def keygen(*args, **kwargs):
            raise error
        return keygen

    for error, code, fragment in ((OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "x" * 300), 2,
                                   "choose a shorter name"),
                                  (OSError(errno.EIO, os.strerror(errno.EIO)), 1, "a bug in candorlm")):
        monkeypatch.setattr("candorlm.privacy.crypto.write_key_file", raises(error))  # imported when keygen runs
        with pytest.raises(SystemExit) as exit_:
            main(["keygen", "-o", str(tmp_path / "k.key")])
        err = capsys.readouterr().err
        assert exit_.value.code == code and fragment in " ".join(err.split()) and "Traceback" not in err
