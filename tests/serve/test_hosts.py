"""DNS rebinding: every route, keyed or not, answers only Host headers naming an address the
server is bound to or a name given with --allowed-hosts; anything else is a 400 in the API's
error format. Checked on the app in-process (every route, keyed and keyless) and on a real keyless
`candorlm serve`; the keyed server of test_serve_http.py is checked there."""

from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

from candorlm.errors import CandorError
from candorlm.lm import LanguageModel
from candorlm.serve.app import create_app
from candorlm.serve.audit import AuditLog
from candorlm.serve.auth import KeyStore, add_key
from candorlm.serve.hosts import HostPolicy, host_of, parse_allowed, split_allowed
from tests.serve.serve_helpers import live_server

EVIL = "evil.example.com"
COMPLETION = {"model": "m", "prompt": "今天", "max_tokens": 2, "temperature": 0}


def refused_for_host(response: httpx.Response) -> bool:
    if response.status_code != 400:
        return False
    error = response.json()["error"]
    return error["code"] == "invalid_host" and error["type"] == "invalid_request_error" and "param" in error


# ---------------------------------------------------------------------- the policy itself


@pytest.mark.parametrize("header,host", [
    ("localhost", "localhost"), ("LocalHost:8000", "localhost"), ("127.0.0.1:65535", "127.0.0.1"),
    ("[::1]", "::1"), ("[::1]:8766", "::1"), ("[0:0:0:0:0:0:0:1]:80", "::1"), ("api.example.com.", None), ("localhost.", None),
    (" api.example.com ", "api.example.com"),
    ("::1", None), ("[::1", None), ("127.0.0.1:70000", None), ("127.0.0.1:", None), ("a b", None), ("", None),
    ("evil.example.com:80:80", None), ("[127.0.0.1]", None), ("ex@mple.com", None), (None, None)])
def test_host_headers_are_parsed_strictly(header, host):
    assert host_of(header) == host


@pytest.mark.parametrize("bind,allowed,passes,refused", [
    ("127.0.0.1", [], ["localhost", "127.0.0.1", "::1"], [EVIL, "192.168.1.20", "127.0.0.2", "localhost.evil.com"]),
    ("127.8.9.10", [], ["localhost", "127.8.9.10"], [EVIL, "127.0.0.2"]),
    ("::1", [], ["::1", "localhost", "127.0.0.1"], [EVIL]),
    ("localhost", ["api.example.com"], ["localhost", "api.example.com"], [EVIL, "x.api.example.com"]),
    ("192.168.1.20", ["*.corp.example"], ["192.168.1.20", "a.corp.example", "a.b.corp.example"],
     ["localhost", "127.0.0.1", "corp.example", "evilcorp.example", "192.168.1.21"]),
    ("0.0.0.0", [], ["localhost", "10.1.2.3", "::1", "2001:db8::1"], [EVIL, "my-laptop"]),
    ("::", ["my-laptop"], ["my-laptop", "10.1.2.3"], [EVIL]),
    ("127.0.0.1", ["*"], [EVIL, None], []),
])
def test_the_policy_follows_the_bind_address_and_allowed_hosts(bind, allowed, passes, refused):
    policy = HostPolicy.for_bind(bind, allowed)
    assert all(policy.allows(h) for h in passes), policy
    assert not any(policy.allows(h) for h in refused), policy
    assert not HostPolicy.for_bind(bind, allowed).allows(None) or "*" in allowed  # no Host header: refused


@pytest.mark.parametrize("entry", ["http://api.example.com", "api.example.com:8000", "*", "*.", "a*.example.com",
                                   "*example.com", "", "a b", "api.example.com/v1", "[::1]:80"])
def test_bad_allowed_hosts_entries_are_refused_by_name(entry):
    if entry == "*":
        assert parse_allowed(entry) == ("any", "*")
        return
    with pytest.raises(CandorError, match="--allowed-hosts"):
        parse_allowed(entry)


def test_allowed_hosts_come_comma_separated_or_as_a_list():
    assert split_allowed("a.example, *.b.example,,") == ["a.example", "*.b.example"]
    assert split_allowed(["a.example,c.example", "[::1]"]) == ["a.example", "c.example", "[::1]"]
    assert split_allowed(None) == []


# ---------------------------------------------------------------------- in process: every route


@pytest.fixture(scope="module")
def lm(trained_run):
    return LanguageModel.load(trained_run, device="cpu")


ROUTES = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/admin/audit"),
          ("GET", "/v1/admin/keys"), ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/"),
          ("GET", "/ui/app.js"), ("GET", "/openapi.json"), ("GET", "/no/such/page")]


@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
def test_every_route_refuses_a_foreign_host_with_or_without_keys(lm, tmp_path, keyed):
    keys = None
    headers = {}
    if keyed:
        key = add_key(tmp_path / "keys.json", "admin", "generate,explain,admin", requests_per_minute=None)
        keys, headers = KeyStore(tmp_path / "keys.json"), {"Authorization": f"Bearer {key}"}
    audit = AuditLog(tmp_path / "audit.jsonl")
    app = create_app(lm, model_name="m", keys=keys, audit=audit,
                     hosts=HostPolicy.for_bind("127.0.0.1", ["api.example.com"]))
    try:
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            for method, path in ROUTES:
                body = {"json": {**COMPLETION, "messages": [{"role": "user", "content": "你好"}]}} if method == "POST" else {}
                for host in (EVIL, f"{EVIL}:8000", "localhost.", "127.0.0.2", "[::2]", "attacker.127.0.0.1.nip.io"):
                    r = client.request(method, path, headers={**headers, "Host": host}, **body)
                    assert refused_for_host(r), (path, host, r.status_code, r.text)
                for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:8000", "[::1]:8000", "api.example.com",
                             "API.example.com:443"):
                    r = client.request(method, path, headers={**headers, "Host": host}, **body)
                    assert r.status_code != 400 or r.json()["error"]["code"] != "invalid_host", (path, host, r.text)
                    assert r.status_code in (200, 404), (path, host, r.status_code, r.text)
            secret = client.get("/v1/admin/audit", headers={**headers, "Host": EVIL})
            assert "request_id" not in secret.text  # the attacker's page reads no records
    finally:
        app.state.engine.stop()
    refused = [r for r in audit.read() if r.get("refused_host")]
    assert refused and all(r["status"] == 400 for r in refused)  # the attempts are in the audit log


# ---------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def keyless(trained_run, tmp_path_factory):
    audit = tmp_path_factory.mktemp("hosts") / "audit.jsonl"
    with live_server(trained_run, "--model-name", "m", "--audit-log", str(audit),
                     "--allowed-hosts", "api.example.com,*.lan.example") as base:
        yield base


def test_a_keyless_loopback_server_refuses_a_rebound_name(keyless):
    port = keyless.rsplit(":", 1)[1]
    for host in (EVIL, f"{EVIL}:{port}"):
        assert refused_for_host(httpx.post(f"{keyless}/v1/completions", json=COMPLETION, headers={"Host": host}))
        assert refused_for_host(httpx.get(f"{keyless}/v1/admin/audit", headers={"Host": host}))
        assert refused_for_host(httpx.get(f"{keyless}/", headers={"Host": host}))
    for host in (f"127.0.0.1:{port}", "localhost", f"localhost:{port}", f"[::1]:{port}", "[::1]",
                 "api.example.com", "box.lan.example:443"):
        assert httpx.post(f"{keyless}/v1/completions", json=COMPLETION, headers={"Host": host}).status_code == 200
        assert httpx.get(f"{keyless}/", headers={"Host": host}).status_code == 200
        records = httpx.get(f"{keyless}/v1/admin/audit", headers={"Host": host})
        assert records.status_code == 200 and records.json()["data"]
