"""The command table and how it is built: every command's help renders whole, options come from the
library (a new documented parameter is a new flag), one --key-file, errors in one line, missing
extras named, and the core working without any extra."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from candorlm.cli import COMMANDS, app, dispatch, extras, main
from candorlm.cli.options import cli_type, command_callback, doc_args, options_from
from candorlm.errors import CandorError
from tests.conftest import ROOT, TINY_MODEL

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def command_paths(table=COMMANDS, prefix=()):
    for name, entry in table.items():
        if isinstance(entry, tuple):
            yield from command_paths(entry[1], (*prefix, name))
        else:
            yield (*prefix, name)


ALL = [" ".join(p) for p in command_paths()]


def helps(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, (command, result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def every_help() -> dict[str, str]:
    return {path: helps(*path.split()) for path in ALL}


def test_every_command_builds_and_shows_an_example(every_help):
    for path, text in every_help.items():
        assert "Example: candorlm" in text, path
        assert "…" not in text, f"`candorlm {path} --help` cut a word:\n{text}"


def test_help_renders_whole(every_help):
    estimate = " ".join(every_help["estimate"].split())
    assert "TOML file with [model] and [train] sections" in estimate  # Rich markup used to eat [model]
    assert "nano" in estimate and "micro" in estimate  # every preset, read from candorlm/presets
    generate = every_help["generate"]
    assert "--no-cache" in generate and "--no-no-cache" not in generate


def test_one_key_file_option_wherever_a_file_may_be_encrypted():
    from candorlm.cli.options import KeyFile

    shared = " ".join(KeyFile.__metadata__[0].help.split())
    expected = {"prepare", "train", "sweep", "generate", "chat", "export", "finetune", "eval", "explain",
                "estimate", "encrypt", "decrypt", "verify", "audit", "serve"}
    found = set()
    for path in ALL:
        command = dispatch.build(dispatch.load(dispatch_entry(path)), path)
        for param in command.params:
            if "--key-file" in getattr(param, "opts", ()):
                found.add(path)
                if path != "scrub":  # there the key makes consistent pseudonyms; it reads nothing encrypted
                    assert " ".join(param.help.split()) == shared, path
    assert expected <= found, expected - found


def dispatch_entry(path: str) -> str:
    entry = COMMANDS
    for part in path.split():
        entry = entry[part] if isinstance(entry, dict) else entry[1][part]
    return entry


def test_doc_args_reads_google_style_sections():
    def f(a, b=1, *, c=None):
        """Summary.

        Args:
            a: First line
                and its continuation.
            b (int): Second.
            c: Third.

        Returns:
            nothing: not an argument.
        """

    assert doc_args(f) == {"a": "First line and its continuation.", "b": "Second.", "c": "Third."}


def test_cli_types_follow_the_annotations():
    from typing import List, Literal, Optional, Sequence

    assert cli_type(str | Path | None) == Optional[Path]
    assert cli_type(str | Sequence[int]) is str
    assert cli_type(Sequence[str]) == List[str]
    assert cli_type(Literal["a", "b"]) == Literal["a", "b"]
    assert cli_type(dict) is None


def library_function(corpus: str, out: str | Path, *, width: int = 7, mode: str = "fast", verbose: bool = False):
    """A library function as the commands see one.

    Args:
        corpus: What to read.
        out: Where to write.
        width: How wide [in cells].
        mode: fast or careful.
        verbose: Say more.
    """
    return dict(corpus=corpus, out=out, width=width, mode=mode, verbose=verbose)


def test_a_library_parameter_is_a_flag_with_its_default_and_help(tmp_path):
    seen = {}

    @options_from(f"{__name__}:library_function", flags={"mode": "--how"})
    def toy(**options):
        """A toy command.

        Example: candorlm toy corpus -o out
        """
        seen.update(library_function(**options))

    command = dispatch.build(toy, "toy")
    flags = {opt for p in command.params for opt in getattr(p, "opts", ())}
    assert {"corpus", "-o", "--out", "--width", "--how", "--verbose"} <= flags
    width = next(p for p in command.params if p.name == "width")
    assert width.default == 7 and width.help == r"How wide \[in cells]."  # escaped: it renders whole
    command.main(["text.txt", "-o", str(tmp_path), "--how", "careful"], standalone_mode=False)
    assert seen == dict(corpus="text.txt", out=tmp_path, width=7, mode="careful", verbose=False)


def undocumented(x: int = 1):
    """No Args section."""


def unparsable(x: dict | None = None):
    """Args:
    x: A mapping.
    """


def test_an_undocumented_or_unparsable_parameter_is_refused_when_built():
    for name, reason in (("undocumented", "has no help"), ("unparsable", "has no command-line form")):
        command = options_from(f"{__name__}:{name}")(lambda **options: None)
        with pytest.raises(TypeError, match=f"parameter 'x'.*{reason}"):
            command_callback(command)


def run_main(monkeypatch, capsys, func, *args):
    monkeypatch.setattr(dispatch, "load", lambda entry: func)
    with pytest.raises(SystemExit) as exit_:
        main(["report", *args])
    return exit_.value.code, capsys.readouterr().err


def test_errors_end_in_one_line_and_a_status(monkeypatch, capsys):
    def candor():
        """Fails as a user error does."""
        raise CandorError("the data directory is empty")

    def bug():
        """Fails as a bug does."""
        raise RuntimeError("index out of range")

    def interrupted():
        """Ctrl-C."""
        raise KeyboardInterrupt

    code, err = run_main(monkeypatch, capsys, candor)
    assert code == 2 and err.strip() == "error: the data directory is empty"
    code, err = run_main(monkeypatch, capsys, bug)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "unexpected RuntimeError: index out of range" in err and "CANDORLM_DEBUG=1" in err
    code, err = run_main(monkeypatch, capsys, interrupted)
    assert code == 130 and err.strip() == "error: interrupted"  # one line, not silence


def test_usage_errors_are_one_line(monkeypatch, capsys):
    for args, fragment in ((["train", "--max-steps", "many"], "Invalid value for '--max-steps'"),
                           (["nonsense"], "No such command 'nonsense'"),
                           (["prepare", "x", "--tokenizer", "bytes"], "Invalid value for '--tokenizer'")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and fragment in err and "Traceback" not in err, err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_extras_match_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = declared["optional-dependencies"]
    module_of = {"scikit-learn": "sklearn", "noto-cjk-sans-jp-regular": "noto_cjk_sans_jp_regular",
                 "fonttools": "fontTools"}
    for extra, modules in extras.EXTRAS.items():
        names = [req.split(">")[0].split("=")[0].split("[")[0].split(";")[0].strip().lower()
                 for req in optional[extra]]
        assert sorted(module_of.get(n, n) for n in names) == sorted(modules), extra
    assert set(extras.EXTRAS) | {"all", "docs", "test"} == set(optional)  # docs: the site, no command needs it
    assert optional["test"][0] == "candorlm[all,docs]"
    assert all(e in optional["all"][0] for e in extras.EXTRAS)
    assert len([d for d in declared["dependencies"] if "python_version" not in d]) <= 10


def blocked(*args: str, block=None, script: str = "from candorlm.cli import main\nmain()",
            timeout: int = 600) -> subprocess.CompletedProcess:
    """`candorlm ARGS` (or `script`) in a subprocess where the modules of the extras (or `block`) cannot
    be imported, as on a core install."""
    modules = block if block is not None else sorted({m for ms in extras.EXTRAS.values() for m in ms})
    guard = f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None  # import name -> ModuleNotFoundError\n"
    return subprocess.run([sys.executable, "-c", guard + script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "CANDORLM_PROGRESS": "0"})


@pytest.mark.slow
def test_a_missing_extra_is_named_before_the_command_starts(tmp_path):
    proc = blocked("serve", tmp_path, block=["fastapi"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: `candorlm serve` needs fastapi, which is not installed: "
                                   "pip install 'candorlm[serve]'")


@pytest.mark.slow
def test_a_missing_extra_deep_in_a_command_is_named(tmp_path):
    corpus = tmp_path / "notes.txt"  # English names are found with faker's name lists
    corpus.write_text("Alice Smith called 13812345678.\n\nJohn Brown wrote to bob@example.com.\n", encoding="utf-8")
    proc = blocked("prepare", corpus, "--out", tmp_path / "d", "--tokenizer", "char", "--vocab-size", "300",
                   "--scrub", block=["faker"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: `candorlm prepare` needs faker, which is not installed: pip install 'candorlm[privacy]'" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_the_core_imports_and_offers_its_commands_without_any_extra():
    script = textwrap.dedent("""
        from typer.testing import CliRunner
        from candorlm.cli import app
        for command in ("prepare", "train", "generate", "export", "chat", "estimate", "ledger", "tokenizer train"):
            result = CliRunner().invoke(app, [*command.split(), "--help"])
            assert result.exit_code == 0 and "Example" in result.output, (command, result.output, result.exception)
        print("ok")
    """)
    proc = blocked(script=script)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


@pytest.mark.slow
def test_the_core_trains_generates_and_exports_without_any_extra(tmp_path, corpus_file):
    data, run, hf = tmp_path / "data", tmp_path / "run", tmp_path / "hf"
    assert blocked("prepare", corpus_file, "--out", data, "--tokenizer", "char", "--vocab-size", "600").returncode == 0
    sets = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    proc = blocked("train", "--data", data, "--out", run, "--max-steps", "4", "--eval-every", "2", "--seed", "1", *sets)
    assert proc.returncode == 0, proc.stderr
    proc = blocked("generate", run, "--prompt", "中国", "--max-new-tokens", "4", "--greedy")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    proc = blocked("export", run, "--out", hf)
    assert proc.returncode == 0 and (hf / "config.json").is_file(), proc.stderr


@pytest.mark.slow
def test_tables_print_whole_off_a_terminal():
    proc = subprocess.run([sys.executable, "-m", "candorlm", "estimate", "--preset", "tiny", "--steps", "4",
                           "--hardware", "h100"], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout and max(map(len, proc.stdout.splitlines())) > 80
