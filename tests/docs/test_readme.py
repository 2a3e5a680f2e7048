"""The README's textbook example runs as written and learns."""

import re

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"


@pytest.mark.slow
def test_textbook_example_runs_and_learns(capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- textbook-example -->\n```python\n(.*?)```", text, re.S)
    assert block, "the README lost its textbook example"
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    losses = scope["losses"]
    assert len(losses) == 10 and losses[-1] < losses[0] - 1.0
    assert scope["model"].cfg.vocab_size == 1000 and scope["model"].cfg.n_heads == 2
    printed = capsys.readouterr().out
    assert "epoch 9" in printed
