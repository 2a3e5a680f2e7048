"""The documentation site builds with `mkdocs build --strict`: no broken link, no page left out
of the navigation, no API reference to a name that is gone. It builds offline: nothing in it
points at a CDN or a web font."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# mkdocs, mkdocs-material, mkdocstrings and its Python handler (the `docs` extra)
MISSING = [name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
           if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed: pip install -e '.[docs]' (the test extra includes it)")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def test_every_page_builds_and_is_in_the_navigation(site: Path) -> None:
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    assert len(pages) > 20
    for page in pages:
        built = site / (page.with_suffix("") / "index.html" if page.stem != "index" else page.with_suffix(".html"))
        assert built.is_file(), f"docs/{page} did not become {built.relative_to(site)}"
    nav = (site / "index.html").read_text(encoding="utf-8")
    for title in ("Getting started", "Training", "Tasks", "Privacy and security", "Architecture", "Python API",
                  "Benchmarks"):
        assert f">{title}<" in re.sub(r"\s*<", "<", re.sub(r">\s*", ">", nav)), f"the navigation lost {title!r}"


def test_the_files_pages_link_to_are_in_the_site(site: Path) -> None:
    assert (site / "explain-demo.png").stat().st_size > 10_000
    assert (site / "slurm.sbatch").read_text(encoding="utf-8").startswith("#!")
    explain = (site / "explain" / "index.html").read_text(encoding="utf-8")
    assert 'src="../explain-demo.png"' in explain


def test_api_reference_renders_the_docstrings(site: Path) -> None:
    api = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in ("candorlm.pretrain.train", "candorlm.prepare.prepare", "candorlm.lm.load"):
        assert f'id="{name}"' in api, f"the API reference lost {name}"
    # text that only the docstrings hold
    assert "Train a model and write the run directory" in api
    assert "Everything is written to a temporary sibling directory first" in api
    models = (site / "reference" / "model" / "index.html").read_text(encoding="utf-8")
    assert 'id="candorlm.model.DecoderLM"' in models and 'id="candorlm.model.hooks.run_with_cache"' in models


def test_the_site_needs_no_network(site: Path) -> None:
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        for url in re.findall(r"""(?:src|href)=["'](https?://[^"']+)""", html):
            assert not re.search(r"fonts\.(googleapis|gstatic)\.com|cdn|unpkg|jsdelivr", url), (
                f"{page.relative_to(site)} loads {url}")


def test_every_page_has_one_title() -> None:
    """One H1 per page, the sections below it: the navigation and the search read them."""
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        titles = re.findall(r"^# .+", text, re.M)
        assert len(titles) == 1 and text.lstrip().startswith("# "), f"{page.relative_to(ROOT)}: {titles}"
