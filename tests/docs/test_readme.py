"""The README gets a newcomer going, and the textbook example in the docs runs as written and learns.

Every other code block of the README and the docs pages is checked by tests/docs/test_code_blocks.py.
"""

import re

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150, "the README is a starting page: move reference material to docs/"
    first_block = re.search(r"```\n(.*?)```", text, re.S)
    assert first_block and [line.split("#")[0].strip() for line in first_block.group(1).splitlines()] == \
        ["make demo", "make test"]
    assert text.index(first_block.group(0)) < text.index("\n## "), "the two commands come first"


@pytest.mark.slow  # trains a model
def test_textbook_example_runs_and_learns(capsys):
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    found = [(page, m) for page in pages
             for m in [re.search(r"<!-- textbook-example -->\n```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)]
             if m]
    assert len(found) == 1, "exactly one page holds the textbook example (docs/model-families.md)"
    page, block = found[0]
    scope: dict = {}
    exec(compile(block.group(1), str(page.relative_to(ROOT)), "exec"), scope)
    losses = scope["losses"]
    assert len(losses) == 10 and losses[-1] < losses[0] - 1.0
    assert scope["model"].cfg.vocab_size == 1000 and scope["model"].cfg.n_heads == 2
    printed = capsys.readouterr().out
    assert "epoch 9" in printed
