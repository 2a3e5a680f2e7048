"""Shared fixtures: a small real corpus (People's Daily articles), prepared data, a tiny trained run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("CANDORLM_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from candorlm.corpus import peoples_daily_documents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the repository
OUTPUT = ROOT / "test-output"  # screenshots and pages a person may look at after a run

TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 64}
TINY_TRAIN = {"batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup_steps": 2, "log_every": 1,
              "eval_every": 5, "eval_tokens": 2048, "save_every": 5, "precision": "fp32", "seed": 7}


def write_articles(path: Path, start: int, count: int) -> Path:
    docs = []
    for i, doc in enumerate(peoples_daily_documents()):
        if i >= start + count:
            break
        if i >= start:
            docs.append(doc.text)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def run_cli(*args, cwd=None, check=True):
    """`candorlm ARGS` in a real subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "candorlm", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "CANDORLM_PROGRESS": "0", "COLUMNS": "200"})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    text = " ".join(proc.stderr.split())
    assert "error:" in text
    for fragment in fragments:
        assert fragment in text, text


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session's trained run is slow (the first one trains it); tests that
    train in other ways carry @pytest.mark.slow themselves."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 People's Daily articles, blank-line separated (about 70k characters)."""
    return write_articles(tmp_path_factory.mktemp("corpus") / "pd.txt", 0, 150)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    from candorlm.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "pd"
    prepare([str(corpus_file)], out, tokenizer="bpe", vocab_size=512, val_fraction=0.1)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from candorlm.pretrain import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(out, data=data_dir, model=TINY_MODEL, max_steps=30, **TINY_TRAIN)
    return out


@contextmanager
def headless_chromium(profile: Path, window: str = "1200,1800") -> Iterator[Any]:
    """Debian's Chromium, headless and offline, driven by Selenium; skips the test where the
    browser, its driver or selenium is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={window}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
