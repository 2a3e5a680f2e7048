"""API keys, scopes and limits without a server: storage, constant-time checks, buckets, the CLI."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest

from candorlm.errors import CandorError
from candorlm.serve import auth
from candorlm.serve.auth import KeyStore, Limiter, OverLimit, add_key, list_keys, parse_key, revoke_key
from candorlm.serve.server import check_binding, is_loopback


def test_keys_are_stored_only_as_salted_hashes(tmp_path):
    path = tmp_path / "keys.json"
    k1 = add_key(path, "alice", "generate,explain")
    k2 = add_key(path, "bob", ["generate"], tokens_per_hour=1000)
    text = path.read_text()
    key_id, secret = parse_key(k1)
    assert secret not in text and k1 not in text and key_id in text  # the id is public, the secret is not
    records = {r.name: r for r in list_keys(path)}
    alice = records["alice"]
    assert alice.hash == hashlib.sha256(bytes.fromhex(alice.salt) + secret.encode()).hexdigest()
    assert records["alice"].salt != records["bob"].salt and len(bytes.fromhex(alice.salt)) == 16
    assert records["alice"].scopes == ("generate", "explain") and records["bob"].tokens_per_hour == 1000
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store = KeyStore(path)
    assert store.verify(k1).name == "alice" and store.verify(k2).name == "bob"
    assert store.verify(k1 + "x") is None and store.verify(k2.replace(".", ".x", 1)) is None


def test_key_checks_compare_digests_in_constant_time_for_every_kind_of_wrong_key(tmp_path, monkeypatch):
    """Each check hashes what was presented and compares 32-byte digests with hmac.compare_digest:
    a right id with a wrong secret, an unknown id, a malformed key and the right key all take the
    same steps, so timing cannot reveal how much of a secret matched (nor whether an id exists)."""
    path = tmp_path / "keys.json"
    key = add_key(path, "alice", "generate")
    store = KeyStore(path)
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), len(a), type(b), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    key_id, secret = parse_key(key)
    near_miss = f"clm-{key_id}.{secret[:-1]}{'a' if secret[-1] != 'a' else 'b'}"
    far_miss = f"clm-{key_id}.{'z' * len(secret)}"
    presented = [key, near_miss, far_miss, "clm-ffffffffffff." + secret, "no-such-format", "x" * 5000]
    results = [store.verify(p) for p in presented]
    assert [r is not None for r in results] == [True, False, False, False, False, False]
    assert calls == [(bytes, 32, bytes, 32)] * len(presented)
    # And no code path compares secrets or hashes with ==.
    source = open(auth.__file__, encoding="utf-8").read()
    verify_src = source[source.index("    def verify("):source.index("# ----", source.index("    def verify("))]
    assert "compare_digest" in verify_src and " == " not in verify_src


def test_scopes_names_and_files_are_checked(tmp_path):
    path = tmp_path / "keys.json"
    with pytest.raises(CandorError, match="unknown scope 'write'.*generate, explain, admin"):
        add_key(path, "a", "generate,write")
    with pytest.raises(CandorError, match="no scopes"):
        add_key(path, "a", "")
    with pytest.raises(CandorError, match="letters, digits"):
        add_key(path, "a b", "generate")
    add_key(path, "a", "generate")
    with pytest.raises(CandorError, match="already exists"):
        add_key(path, "a", "generate")
    with pytest.raises(CandorError, match="no key named 'zed'.*keys: a"):
        revoke_key(path, "zed")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o600)  # private, as a keys file must be: this test is about its content
    with pytest.raises(CandorError, match="bad.json is not a candorlm keys file"):
        KeyStore(bad)
    with pytest.raises(CandorError, match="keys file not found"):
        KeyStore(tmp_path / "missing.json")


def test_a_keys_file_damaged_while_serving_fails_closed(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "a", "generate")
    store = KeyStore(path)
    assert store.verify(key) is not None
    path.write_text("garbage, and longer than before")
    assert store.verify(key) is None and "not a candorlm keys file" in store.error


def test_request_rate_refills_evenly_and_says_when_to_retry(tmp_path):
    now = [1000.0]
    limiter = Limiter(clock=lambda: now[0])
    add_key(tmp_path / "k.json", "a", "generate", requests_per_minute=3)
    record = list_keys(tmp_path / "k.json")[0]
    for _ in range(3):
        limiter.check_request(record)
    with pytest.raises(OverLimit) as over:
        limiter.check_request(record)
    assert over.value.retry_after == 20 and over.value.code == "rate_limit_exceeded"  # one per 20 s
    now[0] += 20
    limiter.check_request(record)
    with pytest.raises(OverLimit):
        limiter.check_request(record)


def test_token_budget_reserves_and_refunds(tmp_path):
    now = [0.0]
    limiter = Limiter(clock=lambda: now[0])
    add_key(tmp_path / "k.json", "a", "generate", requests_per_minute=None, tokens_per_hour=3600)
    record = list_keys(tmp_path / "k.json")[0]
    limiter.reserve_tokens(record, 3000)
    with pytest.raises(OverLimit) as over:
        limiter.reserve_tokens(record, 1000)
    assert over.value.retry_after == 400 and over.value.code == "token_budget_exceeded"  # 1 token/s refill
    limiter.refund_tokens(record, 2500)  # the request used only 500 of its 3000
    limiter.reserve_tokens(record, 1000)
    with pytest.raises(ValueError, match="more than key 'a' may use in an hour"):
        limiter.reserve_tokens(record, 5000)


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True),
                                     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
                                     ("10.0.0.1", False), ("example.org", False)])
def test_only_loopback_may_go_without_keys(host, ok):
    assert is_loopback(host) is ok
    if ok:
        check_binding(host, None, False)
    else:
        with pytest.raises(CandorError, match="refusing to serve on .* without API keys"):
            check_binding(host, None, False)
        check_binding(host, "keys.json", False)
        check_binding(host, None, True)  # --insecure-no-auth: the operator insists


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "candorlm", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "CANDORLM_PROGRESS": "0", "COLUMNS": "200"})


@pytest.mark.slow
def test_cli_keys_add_list_revoke_and_serve_refuses_a_public_address_without_keys(tmp_path):
    path = tmp_path / "keys.json"
    added = run_cli("keys", "add", "alice", "--scopes", "generate,explain", "--keys", path, "--token-budget", "500")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("clm-") and key not in path.read_text()
    listed = run_cli("keys", "list", "--keys", path)
    assert "alice\tgenerate,explain\t60/min\t500 tokens/h" in listed.stdout and key not in listed.stdout
    bad = run_cli("keys", "add", "bob", "--scopes", "everything", "--keys", path)
    assert bad.returncode == 2 and "unknown scope" in bad.stderr and "Traceback" not in bad.stderr
    assert run_cli("keys", "revoke", "alice", "--keys", path).returncode == 0
    assert "alice" not in run_cli("keys", "list", "--keys", path).stdout
    refused = run_cli("serve", tmp_path, "--host", "0.0.0.0", "--port", "9")  # refused before loading anything
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "refusing to serve on 0.0.0.0 without API keys" in " ".join(refused.stderr.split())
    contradiction = run_cli("serve", tmp_path, "--keys", path, "--insecure-no-auth")
    assert contradiction.returncode == 2 and "contradict" in contradiction.stderr
    for cmd in (("serve",), ("keys", "add"), ("keys", "list"), ("keys", "revoke")):
        out = run_cli(*cmd, "--help").stdout
        assert "Example" in out and "candorlm" in out
