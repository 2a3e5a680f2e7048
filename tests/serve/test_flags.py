"""`candorlm serve` refuses a setting that would start a useless or failing server before it
listens: numbers out of range, a bad device or model name, a bad --allowed-hosts entry, an
audit log that cannot be written or is not ours, a damaged keys file, a port in use. Each is
one line and exit status 2 from the CLI, a CandorError from the library."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from candorlm.errors import CandorError
from candorlm.io.sealed import Key
from candorlm.privacy.crypto import encrypt_path
from candorlm.serve.server import serve

BAD = [
    ({"port": 70000}, "--port must be a whole number from 1 to 65,535, got 70000"),
    ({"port": 0}, "--port must be"),
    ({"port": -1}, "--port must be"),
    ({"max_tokens": -1}, "--max-tokens must be a whole number at least 1, got -1"),
    ({"max_tokens": 0}, "--max-tokens must be"),
    ({"max_body_bytes": 0}, "--max-body must be a whole number from 1,024"),
    ({"max_body_bytes": 100}, "--max-body must be"),
    ({"max_body_bytes": 1 << 40}, "--max-body must be"),
    ({"max_batch": 0}, "--max-batch must be a whole number from 1 to 1,024, got 0"),
    ({"max_batch": 10**6}, "--max-batch must be"),
    ({"max_tokens": 2.5}, "--max-tokens must be a whole number"),
    ({"device": "banana"}, "--device 'banana' is not a device"),
    ({"device": "cuda:7"}, "--device cuda:7: this machine has"),
    ({"model_name": ""}, "--model-name ''"),
    ({"model_name": "a/b"}, "--model-name 'a/b'"),
    ({"model_name": "x\n"}, "--model-name"),
    ({"allowed_hosts": "http://api.example.com"}, "--allowed-hosts: 'http://api.example.com' is not a host name"),
    ({"allowed_hosts": "api.example.com:8000"}, "--allowed-hosts"),
    ({"host": "0.0.0.0"}, "refusing to serve on 0.0.0.0 without API keys"),
]


@pytest.mark.parametrize("settings,message", BAD, ids=[f"{next(iter(s))}={next(iter(s.values()))!r}" for s, _ in BAD])
def test_bad_settings_are_refused_before_anything_loads(tmp_path, settings, message):
    # tmp_path is not even a run: every one of these is refused before the run is opened.
    with pytest.raises(CandorError) as err:
        serve(tmp_path, **settings)
    assert message in str(err.value)
    assert "\n" not in str(err.value).strip()


def test_an_unwritable_audit_log_stops_the_server_at_start(trained_run, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    notes = tmp_path / "notes.txt"
    notes.write_text("my own notes\nnot a log\n")
    before = notes.read_bytes()
    cases = {tmp_path / "folder": "is a directory; give a file path, e.g. --audit-log",
             tmp_path / "afile" / "audit.jsonl": "a part of its path is a file, not a folder",
             notes: "is not a candorlm audit log",
             "/dev/null": "is not a regular file"}
    for path, message in cases.items():
        with pytest.raises(CandorError, match=message):
            serve(trained_run, audit_log=path)
    assert notes.read_bytes() == before  # nothing was added to the user's file
    assert not (trained_run / "audit.jsonl").exists()


def test_an_encrypted_run_needs_an_audit_log_outside_it(trained_run, tmp_path):
    key = Key(raw=bytes(range(32)))
    encrypt_path(trained_run, tmp_path / "enc", key)
    with pytest.raises(CandorError, match="is encrypted, and candorlm does not write into an encrypted run"):
        serve(tmp_path / "enc", key=key)
    sealed = sorted(p.name for p in (tmp_path / "enc").iterdir())
    for inside in (tmp_path / "enc" / "audit.jsonl", tmp_path / "enc" / "logs" / "audit.jsonl"):
        with pytest.raises(CandorError, match="plain text inside the encrypted tree"):
            serve(tmp_path / "enc", key=key, audit_log=inside)
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == sealed
    (tmp_path / "old.jsonl").write_bytes((tmp_path / "enc" / "config.toml").read_bytes())
    with pytest.raises(CandorError, match="the audit log .* is encrypted"):
        serve(tmp_path / "enc", key=key, audit_log=tmp_path / "old.jsonl")


def test_a_jsonl_corpus_is_not_taken_for_an_audit_log(trained_run, tmp_path):
    corpus = tmp_path / "reviews.jsonl"
    corpus.write_text('{"text": "很好用", "label": "pos"}\n', encoding="utf-8")
    before = corpus.read_bytes()
    with pytest.raises(CandorError, match="is not a candorlm audit log"):
        serve(trained_run, audit_log=corpus)
    assert corpus.read_bytes() == before


def test_a_port_in_use_and_an_address_not_ours_are_one_line(trained_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CandorError, match=f"127.0.0.1:{port} is already in use"):
            serve(trained_run, port=port, audit_log=tmp_path / "audit.jsonl")
    with pytest.raises(CandorError, match="is not an address of this machine"):
        serve(trained_run, host="192.0.2.1", insecure_no_auth=True, audit_log=tmp_path / "audit.jsonl")


def test_a_damaged_keys_file_stops_the_server_at_start(trained_run, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text("{not json")
    keys.chmod(0o600)  # private, as a keys file must be: this test is about its content
    with pytest.raises(CandorError, match="keys.json is not a candorlm keys file"):
        serve(trained_run, keys=keys, audit_log=tmp_path / "audit.jsonl")


@pytest.mark.parametrize("args,message", [
    (["--port", "70000"], "--port must be a whole number from 1 to 65,535"),
    (["--max-tokens", "-1"], "--max-tokens must be"),
    (["--max-body", "0"], "--max-body must be"),
    (["--audit-log", "."], "is a directory"),
    (["--allowed-hosts", "https://x.example"], "--allowed-hosts"),
])
def test_the_cli_says_it_in_one_line_with_status_2(trained_run, args, message):
    done = subprocess.run([sys.executable, "-m", "candorlm", "serve", str(trained_run), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CANDORLM_PROGRESS": "0", "COLUMNS": "400"})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_kv_cache_larger_than_memory_is_refused_before_it_is_allocated():
    import torch

    from candorlm.serve.engine import _check_cache_fits

    with pytest.raises(CandorError, match=r"the KV cache for max_batch 1024 at a context of 131072 tokens needs "
                                          r"[0-9.]+ GiB, more than .*; lower --max-batch"):
        _check_cache_fits((32, 1024, 8, 131072, 128), torch.float32, torch.device("cpu"))
    _check_cache_fits((2, 16, 2, 64, 16), torch.float32, torch.device("cpu"))  # the tests' tiny model fits
