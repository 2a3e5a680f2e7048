"""No temp leftovers: a real `candorlm` process killed mid-build with SIGTERM removes its own
temporary files and dies of the signal; one killed with SIGKILL cannot, so the next command
that writes there finds its leftovers, removes them and says so (for decrypt: partial plaintext)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from candorlm.io.files import TEMP_TAG
from candorlm.io.sealed import Key, encrypt_stream
from tests.conftest import write_articles
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # real subprocesses: prepare, train, interrupts

SECRET = "机密：我的银行卡密码是 314159".encode()
KEY_HEX = "0123456789abcdef" * 4


def start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "candorlm", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CANDORLM_PROGRESS": "0", "COLUMNS": "200"})


def temps(where: Path) -> list[Path]:
    return [p for p in where.iterdir() if TEMP_TAG in p.name]


def wait_for_temp(proc: subprocess.Popen, where: Path, min_bytes: int = 1, timeout: float = 120.0) -> Path:
    """The build's temporary, once it holds something (the process is mid-build)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in temps(where):
            size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if size >= min_bytes:
                return path
        if proc.poll() is not None:
            pytest.fail(f"the command ended before it could be interrupted: {proc.communicate()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no temporary appeared")


def holding_secret(root: Path, skip: set[Path]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p not in skip and SECRET in p.read_bytes()]


@pytest.fixture
def big_encrypted(tmp_path) -> tuple[Path, Path, bytes]:
    """A ~6 MB encrypted file in 64-byte chunks, so that decrypting it takes seconds."""
    plain = (SECRET + b"\n" + os.urandom(2000).hex().encode() + b"\n") * 1400
    key = tmp_path / "k.key"
    key.write_text(KEY_HEX + "\n")
    key.chmod(0o600)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plain), out, Key.from_hex(KEY_HEX), chunk_size=64)
    enc = tmp_path / "big.enc"
    enc.write_bytes(out.getvalue())
    return enc, key, plain


def test_sigterm_during_decrypt_leaves_no_plaintext(tmp_path, big_encrypted):
    enc, key, plain = big_encrypted
    proc = start("decrypt", enc, "-o", "big.dec", "--key-file", key, cwd=tmp_path)
    wait_for_temp(proc, tmp_path, min_bytes=len(SECRET) + 1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # cleaned up, then died of the signal as asked
    assert temps(tmp_path) == [] and not (tmp_path / "big.dec").exists()
    assert holding_secret(tmp_path, {enc}) == []


def test_sigkill_during_decrypt_is_cleaned_and_reported_by_the_next_command(tmp_path, big_encrypted):
    enc, key, plain = big_encrypted
    proc = start("decrypt", enc, "-o", "big.dec", "--key-file", key, cwd=tmp_path)
    left = wait_for_temp(proc, tmp_path, min_bytes=len(SECRET) + 1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert left.exists()  # kill -9: nothing could clean up
    again = run_cli("decrypt", enc, "-o", "big.dec", "--key-file", key, cwd=tmp_path)
    text = " ".join(again.stderr.split())
    assert "found and removed" in text and "partial plaintext" in text and left.name in text
    assert temps(tmp_path) == []
    assert (tmp_path / "big.dec").read_bytes() == plain


def test_prepare_killed_mid_build_leaves_no_temp_folder(tmp_path):
    corpus = write_articles(tmp_path / "pd.txt", 0, 400)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = start("prepare", corpus, "--out", "data", "--tokenizer", "char", "--workers", "1", cwd=tmp_path)
        wait_for_temp(proc, tmp_path, min_bytes=1)
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode == -sig
        if sig == signal.SIGTERM:
            assert temps(tmp_path) == []
        else:
            assert temps(tmp_path)  # left for the next command
    done = run_cli("prepare", corpus, "--out", "data", "--tokenizer", "char", cwd=tmp_path)
    assert "found and removed" in " ".join(done.stderr.split())
    assert temps(tmp_path) == [] and (tmp_path / "data" / "meta.json").is_file()


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    from candorlm.io.files import remove_stale_temps, temp_path

    mine = temp_path(tmp_path / "out")  # this process: alive
    mine.write_text("in progress")
    other = tmp_path / ".notes.txt.tmp-123"  # not candorlm's naming: never touched
    other.write_text("someone else's")
    assert remove_stale_temps(tmp_path) == []
    assert mine.exists() and other.exists()


def test_a_killed_trainings_replaced_run_is_kept_not_cleared(tmp_path):
    """A train --overwrite killed (kill -9, the OOM killer) leaves the run it was replacing set
    aside while its own run is half-made: the next command keeps it whole, visibly, where an
    `old` leftover (the replacement was complete) is cleared."""
    import subprocess
    import sys

    from candorlm.io.files import remove_stale_temps, temp_path

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()  # the new run, half-made
    aside = temp_path(run, "replaced", pid=dead.pid)
    aside.mkdir()
    (aside / "model.safetensors").write_bytes(b"weights of the old run")
    remove_stale_temps(tmp_path)
    kept = tmp_path / "run.replaced"
    assert (kept / "model.safetensors").read_bytes() == b"weights of the old run" and not aside.exists()
    again = temp_path(run, "replaced", pid=dead.pid)  # a second time: a free name, never over the first
    again.mkdir()
    remove_stale_temps(tmp_path)
    assert (tmp_path / "run.replaced-2").is_dir() and kept.is_dir()
    lone = temp_path(tmp_path / "solo", "replaced", pid=dead.pid)  # nothing took its place: put back
    lone.mkdir()
    remove_stale_temps(tmp_path)
    assert (tmp_path / "solo").is_dir() and not lone.exists()
