"""The code in the README and on every docs/ page works as written.

- A python block runs in a scratch directory; where it reads `runs/demo`, that is a small
  trained decoder (and the test is `slow`).
  A block that cannot run here (it trains for minutes, or needs a live server) says why in a
  `<!-- docs-test: no-run, REASON -->` line right above it; it still compiles, its imports run,
  every `module.name` it reads exists, and every call to a function it imported binds to that
  function's signature (so a renamed function or parameter fails here).
- A shell block's `candorlm ...` lines name real commands and options: `candorlm CMD --help`
  answers, and every `--option` and `-o` on the line appears in that help. Paths into the
  repository (`bench/...`, `docs/...`) exist and `make` targets are in the Makefile.
- The block marked `<!-- textbook-example -->` runs in tests/test_readme.py, which checks
  that it learns.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<mode>[\w-]+)\s*,?\s*(?P<reason>.*?)\s*-->\s*$")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
OPTION = re.compile(r"(?<![\w/.=-])(--?[A-Za-z][\w-]*)")
SUBCOMMAND_WORD = re.compile(r"^[a-z][a-z0-9-]*$")
REPO_PATH = re.compile(r"^(bench|docs|candorlm|tests)/[\w./-]+$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    mode: str  # run | no-run | textbook
    reason: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mode, reason = "run", ""
        if before == "<!-- textbook-example -->":
            mode = "textbook"
        elif (d := DIRECTIVE.match(before)) is not None:
            mode, reason = d["mode"], d["reason"]
            assert mode == "no-run" and reason, (
                f"{page.name}: a docs-test directive is `<!-- docs-test: no-run, REASON -->`, got {before!r}")
        body = "\n".join(line[len(m["indent"]):] for line in m["body"].split("\n"))
        found.append(Block(page, text.count("\n", 0, m.start()) + 2, m["lang"], body, mode, reason))
    return found


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL if b.lang == "python" and b.mode != "textbook"]
SHELL = [b for b in ALL if b.lang in SHELL_LANGS]


def test_every_page_was_read():
    assert (ROOT / "README.md") in PAGES and len(PAGES) > 10
    assert PYTHON and SHELL
    assert any(b.mode == "textbook" for b in ALL), "the textbook example lost its marker"


# ---- python blocks ----


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A scratch directory holding runs/demo: a decoder with the demo's four layers (small), trained briefly."""
    from candorlm.pretrain import train

    root = tmp_path_factory.mktemp("docs-blocks")
    train(root / "runs" / "demo", data=data_dir, model={"d_model": 32, "n_layers": 4, "n_heads": 2, "max_seq_len": 64},
          max_steps=3, batch_size=4, seq_len=32, log_every=1, eval_every=3, eval_tokens=2048, save_every=3, precision="fp32",
          seed=0)
    return root


def _resolve(node: ast.expr, scope: dict[str, Any], block: Block) -> Any:
    """The object a Name or a dotted Attribute chain names, when its root was imported; else None."""
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, scope, block)
        if base is None or not inspect.ismodule(base):
            return None
        assert hasattr(base, node.attr), f"{block.id}: {base.__name__} has no attribute {node.attr!r}"
        return getattr(base, node.attr)
    return None


def check_without_running(block: Block) -> None:
    tree = ast.parse(block.code, filename=block.id)
    scope: dict[str, Any] = {"__builtins__": builtins}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module(body=[node], type_ignores=[]), block.id, "exec"), scope)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            _resolve(node, scope, block)
        if isinstance(node, ast.Call):
            fn = _resolve(node.func, scope, block)
            if fn is None or not callable(fn):
                continue
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                continue
            try:
                sig.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
            except TypeError as exc:
                pytest.fail(f"{block.id}: {ast.unparse(node.func)}(...) does not match {getattr(fn, '__qualname__', fn)}"
                            f"{sig}: {exc}")


def needs_run(block: Block) -> bool:
    return block.mode == "run" and "runs/demo" in block.code


@pytest.mark.parametrize("block", [pytest.param(b, marks=[pytest.mark.slow] if needs_run(b) else []) for b in PYTHON],
                         ids=[b.id for b in PYTHON])
def test_python_block(block: Block, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                      tmp_path: Path) -> None:
    code = compile(block.code, block.id, "exec")
    if block.mode == "no-run":
        check_without_running(block)
        return
    monkeypatch.chdir(request.getfixturevalue("demo_dir") if needs_run(block) else tmp_path)
    exec(code, {"__name__": "__docs__"})


# ---- shell blocks ----


def shell_lines(code: str) -> list[str]:
    lines, current = [], ""
    for raw in code.split("\n"):
        if current:
            raw = " " + raw.strip()
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def split_words(line: str) -> list[str]:
    line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def candorlm_call(words: list[str]) -> tuple[list[str], list[str]] | None:
    """(subcommand words, the rest) of a line that runs candorlm, directly or as `-m candorlm`."""
    for i, word in enumerate(words):
        if Path(word).name == "candorlm" and (i == 0 or words[i - 1] == "-m" or "/" in word):
            rest = words[i + 1:]
            sub = []
            for w in rest[:2]:
                if not SUBCOMMAND_WORD.match(w):
                    break
                sub.append(w)
            return sub, rest[len(sub):]
    return None


# One process answers every `--help` the docs need: `python -m candorlm ARGS --help` for each, in turn.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
answers = {}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    sys.argv = ["candorlm", *argv, "--help"]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_module("candorlm", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    answers[" ".join(argv)] = [code, out.getvalue()]
sys.stdout.write(json.dumps(answers))
"""


def ask_help(subs: set[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """The help of each subcommand path; a path whose words run past the command (a positional
    argument that looks like a word) falls back to its shorter prefix."""
    asked = sorted({sub[:n] for sub in subs for n in range(1, len(sub) + 1)})
    env = dict(os.environ, CANDORLM_PROGRESS="0", COLUMNS="240", NO_COLOR="1", TERM="dumb")
    proc = subprocess.run([sys.executable, "-c", HELP_RUNNER, json.dumps(asked)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = {tuple(k.split()): v for k, v in json.loads(proc.stdout).items()}
    helps = {}
    for sub in subs:
        for n in range(len(sub), 0, -1):
            code, text = answers[sub[:n]]
            if code == 0:
                helps[sub] = text
                break
        else:
            pytest.fail(f"`candorlm {' '.join(sub)} --help` failed: {answers[sub[:1]][1][-800:]}")
    return helps


def commands(block: Block) -> list[tuple[str, list[str], list[str]]]:
    found = []
    for line in shell_lines(block.code):
        call = candorlm_call(split_words(line))
        if call:
            found.append((line, *call))
    return found


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, ...], str]:
    """Every command's --help that a shell block names, asked once."""
    return ask_help({tuple(sub) for b in SHELL for _, sub, _ in commands(b) if sub})


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block(block: Block, helps: dict[tuple[str, ...], str]) -> None:
    for line in shell_lines(block.code):
        words = split_words(line)
        for word in words:
            if REPO_PATH.match(word.rstrip(".,;:")):
                assert (ROOT / word.rstrip(".,;:")).exists(), f"{block.id}: `{line}` names {word}, which is not there"
        if words[:1] == ["make"]:
            makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
            for target in words[1:]:
                if "=" not in target:
                    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{block.id}: no make target {target}"
    for line, sub, rest in commands(block):
        assert sub, f"{block.id}: `{line}` names no candorlm command"
        text = helps[tuple(sub)]
        for opt in {o for w in rest for o in OPTION.findall(w)}:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (
                f"{block.id}: `candorlm {' '.join(sub)}` has no option {opt} (in `{line}`)")


# ---- links the site build does not check ----


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which is not there"


def test_shell_parser_understands_the_forms_the_docs_use() -> None:
    assert candorlm_call(split_words("torchrun --nproc-per-node 8 -m candorlm train --data d --resume")) == \
        (["train"], ["--data", "d", "--resume"])
    assert candorlm_call(split_words(".venv/bin/candorlm keys add NAME --keys FILE  # prints the key once")) == \
        (["keys", "add"], ["NAME", "--keys", "FILE"])
    assert candorlm_call(split_words("candorlm eval runs/pd --domains builtin:reviews")) == \
        (["eval"], ["runs/pd", "--domains", "builtin:reviews"])
    assert candorlm_call(split_words("pip install candorlm")) is None
    assert shell_lines("torchrun a \\\n    -m candorlm train\nls") == ["torchrun a -m candorlm train", "ls"]
    assert OPTION.findall("small|--params") == ["--params"] and OPTION.findall("builtin:peoples-daily") == []
    assert OPTION.findall("--set train.lr=1e-3") == ["--set"]


def test_the_checks_catch_what_they_are_for(helps: dict[tuple[str, ...], str]) -> None:
    page = ROOT / "docs" / "index.md"
    with pytest.raises(AssertionError, match="has no option --no-such-option"):
        test_shell_block(Block(page, 1, "", "candorlm train --data d --no-such-option\n", "run", ""), helps)
    with pytest.raises(AssertionError, match="which is not there"):
        test_shell_block(Block(page, 1, "", ".venv/bin/python bench/no_such_bench.py\n", "run", ""), helps)
    with pytest.raises(pytest.fail.Exception, match="--help` failed"):
        ask_help({("no-such-command",)})
    with pytest.raises(pytest.fail.Exception, match="does not match"):
        check_without_running(Block(page, 1, "python", "from candorlm.scaling import fit_power_law\n"
                                    "fit_power_law([1, 2], [3, 4], degree=2)\n", "no-run", "r"))
    with pytest.raises(AssertionError, match="has no attribute 'no_such_function'"):
        check_without_running(Block(page, 1, "python", "import candorlm.tasks\ncandorlm.tasks.no_such_function()\n",
                                    "no-run", "r"))
    with pytest.raises(ImportError):
        check_without_running(Block(page, 1, "python", "from candorlm.lm import no_such_name\n", "no-run", "r"))
