"""Commands that write into a run (eval, explain, report, audit) refuse an encrypted run before
doing any work, with one line that says what to do: a plain file inside a sealed tree would leak
what the run holds, and `candorlm decrypt` would then refuse the tree. explain's --out may point
outside the encrypted run; then nothing is written inside it.

The CLI runs in this process (`candorlm.cli.main`), as in test_tamper.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from candorlm.cli import main
from candorlm.errors import CandorError
from candorlm.io.sealed import Key
from candorlm.io.sealedtree import refuse_plain_output_in_sealed_tree
from candorlm.privacy.crypto import encrypt_path, write_key_file


def cli(capsys, *args) -> tuple[int, str]:
    """`candorlm ARGS` in this process: (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code or 0, capsys.readouterr().err


def listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    return write_key_file(tmp_path_factory.mktemp("key") / "k.key")  # written 0600, as decrypt demands


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory, trained_run, key_file) -> Path:
    tree = tmp_path_factory.mktemp("enc") / "run.enc"
    encrypt_path(trained_run, tree, Key.from_file(key_file))
    return tree


REFUSED = {
    "eval --domains": lambda run, key: ("eval", run, "--domains", "--key-file", key),
    "eval --task": lambda run, key: ("eval", run, "--task", "sentiment", "--key-file", key),
    "explain": lambda run, key: ("explain", run, "--prompt", "人民日报", "--key-file", key),
    "explain --out inside": lambda run, key: ("explain", run, "--prompt", "人民日报", "--out", run / "mine",
                                              "--key-file", key),
    "report": lambda run, key: ("report", run),
    "audit": lambda run, key: ("audit", run, "--key-file", key),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_writing_command_refuses_an_encrypted_run(case, encrypted, key_file, capsys, tmp_path):
    before = listing(encrypted)
    code, err = cli(capsys, *REFUSED[case](encrypted, key_file))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "is encrypted" in err and "candorlm decrypt" in err, err
    assert ("--out DIR" in err) == case.startswith("explain"), err  # the way out, where the command has one
    assert listing(encrypted) == before  # nothing new, nothing changed
    code, err = cli(capsys, "decrypt", encrypted, "-o", tmp_path / "plain", "--key-file", key_file)
    assert code == 0, err


def test_explain_out_outside_writes_nothing_into_the_encrypted_run(encrypted, key_file, capsys, tmp_path):
    before = listing(encrypted)
    out = tmp_path / "explain"
    code, err = cli(capsys, "explain", encrypted, "--prompt", "人民日报", "--method", "attention", "--out", out,
                    "--key-file", key_file)
    assert code == 0, err
    assert (out / "explain.json").is_file() and (out / "explain.html").is_file()
    assert listing(encrypted) == before
    code, err = cli(capsys, "decrypt", encrypted, "-o", tmp_path / "plain", "--key-file", key_file)
    assert code == 0, err


def test_a_plain_run_is_not_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[model]\n")
    refuse_plain_output_in_sealed_tree(run, "evals/x.json")  # no error
    refuse_plain_output_in_sealed_tree(run, "evals/x.json", out=tmp_path / "elsewhere", option="--out DIR")


def test_out_inside_a_sealed_tree_is_refused_even_from_a_plain_run(tmp_path):
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    (sealed / "CANDORLM-SEALED.json").write_text("{}")
    with pytest.raises(CandorError, match="is encrypted"):
        refuse_plain_output_in_sealed_tree(tmp_path / "plain", "x", out=sealed / "deep" / "out", option="--out DIR")
