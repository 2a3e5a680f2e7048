"""Shared by the serving tests: a small run with a long context, and a live server on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx


def long_context_run(trained_run: Path, out: Path, max_seq_len: int = 1024) -> Path:
    """The session's tiny trained run with a longer context, so that a request can still be
    generating when its client goes away. Rotary positions have no weights, so only the config
    changes (the model was trained on 32-token windows: past them its text is worse, not broken)."""
    from candorlm.io.manifest import write_manifest
    from candorlm.rundir import open_run

    shutil.copytree(trained_run, out, ignore=shutil.ignore_patterns("checkpoints", "audit.jsonl"))
    run = open_run(out)
    config = run.read_config()
    config.model.max_seq_len = max_seq_len
    run.config.write_text(config.to_toml(), encoding="utf-8")
    write_manifest(out)  # a deliberate change: the run's manifest follows it (loading checks it)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(run: Path, *args: str, timeout: float = 90.0) -> Iterator[str]:
    """`candorlm serve RUN --port P ...` in a subprocess on 127.0.0.1; yields its base URL, then stops it."""
    port = free_port()
    log = (run.parent / f"serve-{port}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "candorlm", "serve", str(run), "--host", "127.0.0.1",
                             "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "CANDORLM_PROGRESS": "0"})
    base = f"http://127.0.0.1:{port}"
    clean_exit = False
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {Path(log.name).read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start in {timeout} s: {Path(log.name).read_text()}")
            time.sleep(0.2)
        yield base
        clean_exit = True
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    server_log = Path(log.name).read_text()
    if clean_exit:
        assert "Traceback" not in server_log, server_log  # no request may have crashed a handler
