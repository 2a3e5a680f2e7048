"""The server as clients meet it: the official `openai` client, keys and limits, bad input,
the audit log, and a client that goes away. One live `candorlm serve` on 127.0.0.1 for the module."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from candorlm.lm import LanguageModel
from candorlm.serve.auth import add_key, revoke_key
from candorlm.serve.chat import chat_prompt_ids, chat_stop_ids
from candorlm.serve.why import explain_token
from tests.serve.serve_helpers import live_server, long_context_run

MODEL = "candor-test"


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory, trained_run):
    return long_context_run(trained_run, tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def lm(serve_run):
    return LanguageModel.load(serve_run, device="cpu")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    made = {
        "full": add_key(path, "full", "generate,explain,admin", requests_per_minute=None),
        "explainer": add_key(path, "explainer", "explain", requests_per_minute=None),
        "slow": add_key(path, "slow", "generate", requests_per_minute=2),
        "budget": add_key(path, "budget", "generate", requests_per_minute=None, tokens_per_hour=40),
    }
    return path, made


@pytest.fixture(scope="module")
def server(serve_run, keys, tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    with live_server(serve_run, "--keys", str(keys[0]), "--model-name", MODEL, "--audit-log", str(audit),
                     "--max-tokens", "900", "--allowed-hosts", "api.example.com") as base:
        yield base, audit


@pytest.fixture(scope="module")
def client(server, keys):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=keys[1]["full"], max_retries=0, timeout=60)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and "param" in error and "code" in error
    return error


# ---------------------------------------------------------------------- the openai client


def test_openai_client_completion_matches_the_library(client, lm):
    reply = client.completions.create(model=MODEL, prompt="中国", max_tokens=12, temperature=0)
    expected = lm.generate("中国", max_new_tokens=12, greedy=True)
    assert reply.choices[0].text == expected
    assert reply.object == "text_completion" and reply.model == MODEL
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens == len(lm.encode_prompt("中国"))
    assert 0 < reply.usage.completion_tokens <= 12


def test_openai_client_streams_a_completion(client, lm):
    stream = client.completions.create(model=MODEL, prompt="经济", max_tokens=20, temperature=0, stream=True)
    pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert len(pieces) > 2
    assert "".join(pieces) == lm.generate("经济", max_new_tokens=20, greedy=True)


def test_openai_client_chat_and_chat_streaming_agree(client, lm):
    messages = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "今天的新闻"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop")
    prompt_ids = chat_prompt_ids(lm.tokenizer, [(m["role"], m["content"]) for m in messages])
    assert reply.usage.prompt_tokens == len(prompt_ids)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_openai_client_n_stop_seed_and_models(client, lm):
    reply = client.completions.create(model=MODEL, prompt=["中国", "人民"], max_tokens=8, n=2, temperature=1.0,
                                      seed=3)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    again = client.completions.create(model=MODEL, prompt=["中国", "人民"], max_tokens=8, n=2, temperature=1.0,
                                      seed=3)
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]
    full = lm.generate("中国", max_new_tokens=16, greedy=True)
    stop = full[5:7]
    cut = client.completions.create(model=MODEL, prompt="中国", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.find(stop)] and cut.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).context_length == 1024
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_explain_returns_the_models_own_attribution_and_attention(server, keys, lm):
    body = {"model": MODEL, "prompt": "中国人民", "target": "经济发展", "target_index": 1, "layer": 1, "head": 1}
    r = httpx.post(f"{server[0]}/v1/explain", json=body, headers=auth(keys[1]["explainer"]), timeout=60)
    assert r.status_code == 200, r.text
    x = r.json()
    prompt, target = lm.encode_prompt("中国人民"), lm.tokenizer.encode("经济发展")
    assert [t["id"] for t in x["tokens"]] == prompt + target
    assert x["position"] == len(prompt) + 1 and x["token"]["id"] == target[1]
    local = explain_token(lm.model, (prompt + target)[:len(prompt) + 2], len(prompt) + 1, layer=1, head=1)
    assert len(x["attention"]["pattern"]) == len(prompt) + 2  # up to the explained token, not past it
    assert x["attribution"]["scores"] == pytest.approx(local.attribution, abs=1e-5)
    for row, expected in zip(x["attention"]["pattern"], local.pattern):
        assert row == pytest.approx(expected, abs=1e-4)
    assert x["attention"]["query"] == x["position"] - 1
    assert x["token"]["probability"] == pytest.approx(local.probability, rel=1e-3)


# ---------------------------------------------------------------------- access control


def test_no_key_or_a_wrong_key_is_401(server, keys):
    base = server[0]
    r = httpx.post(f"{base}/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert assert_error(r, 401)["code"] == "missing_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    real = keys[1]["full"]
    for wrong in (real[:-1] + ("A" if real[-1] != "A" else "B"), "clm-000000000000.nope", "sk-something", "-"):
        r = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {wrong}"})
        assert assert_error(r, 401)["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="clm-x.y", max_retries=0).models.list()
    assert httpx.get(f"{base}/health").json()["auth"] is True  # open, and says keys are needed


def test_a_rebound_name_is_refused_before_the_key_check_and_an_allowed_name_passes(server, keys):
    """DNS rebinding against a keyed server: the page cannot know a key, but it must not even learn
    which refusal it would get; every route answers a foreign Host with the same 400."""
    base, full = server[0], {"Authorization": f"Bearer {keys[1]['full']}"}
    body = {"model": MODEL, "prompt": "今天", "max_tokens": 2}
    for headers in ({}, full, {"Authorization": "Bearer nonsense"}):
        for method, path in (("POST", "/v1/completions"), ("GET", "/v1/admin/audit"), ("GET", "/"),
                             ("GET", "/health")):
            r = httpx.request(method, f"{base}{path}", json=body if method == "POST" else None,
                              headers={**headers, "Host": "evil.example.com"})
            assert assert_error(r, 400)["code"] == "invalid_host", (path, r.text)
    allowed = {**full, "Host": "api.example.com"}
    assert httpx.post(f"{base}/v1/completions", json=body, headers=allowed).status_code == 200
    assert httpx.get(f"{base}/v1/admin/audit", headers=allowed).status_code == 200
    assert httpx.get(f"{base}/", headers=allowed).status_code == 200
    assert assert_error(httpx.get(f"{base}/v1/admin/audit", headers={"Host": "api.example.com"}), 401)


def test_a_key_without_the_scope_is_403(server, keys):
    base = server[0]
    explainer = openai.OpenAI(base_url=f"{base}/v1", api_key=keys[1]["explainer"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="generate"):
        explainer.completions.create(model=MODEL, prompt="x", max_tokens=2)
    r = httpx.get(f"{base}/v1/admin/keys", headers=auth(keys[1]["explainer"]))
    assert assert_error(r, 403)["code"] == "insufficient_scope"
    admin = httpx.get(f"{base}/v1/admin/keys", headers=auth(keys[1]["full"])).json()
    assert {k["name"] for k in admin["data"]} >= {"full", "explainer", "slow", "budget"}
    assert "hash" not in json.dumps(admin) and "salt" not in json.dumps(admin)


def test_over_the_rate_limit_is_429_with_retry_after(server, keys):
    slow = openai.OpenAI(base_url=f"{server[0]}/v1", api_key=keys[1]["slow"], max_retries=0)
    for _ in range(2):
        slow.completions.create(model=MODEL, prompt="x", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as caught:
        slow.completions.create(model=MODEL, prompt="x", max_tokens=2)
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 30  # 2 per minute: the next one is due within half a minute
    assert caught.value.body["code"] == "rate_limit_exceeded"


def test_over_the_token_budget_is_429_and_a_request_beyond_it_is_400(server, keys):
    base, key = server[0], keys[1]["budget"]
    r = httpx.post(f"{base}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 100},
                   headers=auth(key))
    assert assert_error(r, 400)["code"] == "token_budget_exceeded"
    statuses = []
    for _ in range(20):  # each reserves 2 + 12 of the 40 tokens per hour and uses at least 3 of them
        r = httpx.post(f"{base}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 12,
                                                       "temperature": 0}, headers=auth(key), timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "token_budget_exceeded"
            assert int(r.headers["retry-after"]) > 0
            break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses


def test_a_revoked_key_stops_working_at_once(server, keys):
    path = keys[0]
    key = add_key(path, "temporary", "generate", requests_per_minute=None)
    url = f"{server[0]}/v1/models"
    assert httpx.get(url, headers=auth(key)).status_code == 200
    revoke_key(path, "temporary")
    assert_error(httpx.get(url, headers=auth(key)), 401)


# ---------------------------------------------------------------------- bad input

BAD = [
    ("malformed JSON", "/v1/completions", b'{"model": "candor-test", "prompt": ', 400),
    ("a JSON array", "/v1/completions", b'["candor-test"]', 400),
    ("no body", "/v1/chat/completions", b"", 400),
    ("non-UTF-8 bytes", "/v1/completions", b'{"model": "candor-test", "prompt": "\xff\xfe\xfa"}', 400),
    ("a lone surrogate", "/v1/completions", b'{"model": "candor-test", "prompt": "\\ud800"}', 400),
    ("max_tokens a string", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "12"}, 400),
    ("temperature a word", "/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, 400),
    ("stream a string", "/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400),
    ("prompt a number", "/v1/completions", {"model": MODEL, "prompt": 42}, 400),
    ("unknown model", "/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404),
    ("empty messages", "/v1/chat/completions", {"model": MODEL, "messages": []}, 400),
    ("messages a string", "/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400),
    ("unknown role", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400),
    ("n zero", "/v1/completions", {"model": MODEL, "prompt": "x", "n": 0}, 400),
    ("n too many", "/v1/completions", {"model": MODEL, "prompt": "x", "n": 50}, 400),
    ("max_tokens huge", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 10**9}, 400),
    ("prompt past the context", "/v1/completions", {"model": MODEL, "prompt": "中国人民" * 1500, "max_tokens": 5}, 400),
    ("seed out of range", "/v1/completions", {"model": MODEL, "prompt": "x", "seed": 2**70}, 400),
    ("too many stops", "/v1/completions", {"model": MODEL, "prompt": "x", "stop": list("abcdefgh")}, 400),
    ("unsupported logprobs", "/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 5}, 400),
    ("best_of true", "/v1/completions", {"model": MODEL, "prompt": "x", "best_of": True}, 400),  # not 1 in JSON
    ("echo zero", "/v1/completions", {"model": MODEL, "prompt": "x", "echo": 0}, 400),  # not false in JSON
    ("presence_penalty false", "/v1/completions", {"model": MODEL, "prompt": "x", "presence_penalty": False}, 400),
    ("empty prompt list", "/v1/completions", {"model": MODEL, "prompt": []}, 400),
    ("explain past the target", "/v1/explain", {"model": MODEL, "prompt": "x", "target": "y", "target_index": 9}, 400),
    ("explain a missing layer", "/v1/explain", {"model": MODEL, "prompt": "x", "target": "y", "layer": 99}, 400),
    ("explain both prompts", "/v1/explain", {"model": MODEL, "prompt": "x", "target": "y",
                                             "messages": [{"role": "user", "content": "x"}]}, 400),
    ("huge body", "/v1/completions", b'{"model": "candor-test", "prompt": "' + b"a" * (2 << 20) + b'"}', 413),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_a_4xx_with_an_openai_error_object(server, keys, case):
    _, path, body, status = case
    headers = {**auth(keys[1]["full"]), "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server[0]}{path}", content=content, headers=headers, timeout=60)
    assert_error(r, status)


def test_the_neutral_values_of_fields_candorlm_does_not_implement_are_accepted(server, keys):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "best_of": 1, "echo": False, "logprobs": 0,
            "presence_penalty": 0.0, "frequency_penalty": 0, "suffix": ""}
    r = httpx.post(f"{server[0]}/v1/completions", json=body, headers=auth(keys[1]["full"]), timeout=60)
    assert r.status_code == 200, r.text


def test_more_bad_requests(server, keys):
    base, headers = server[0], auth(keys[1]["full"])
    chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MiB with no Content-Length
    r = httpx.post(f"{base}/v1/completions", content=chunks, headers={**headers, "Content-Type": "application/json"})
    assert_error(r, 413)
    r = httpx.post(f"{base}/v1/completions", content=b"model=x", headers={**headers, "Content-Type": "text/plain"})
    assert_error(r, 400)
    assert_error(httpx.get(f"{base}/v1/completions", headers=headers), 405)
    assert_error(httpx.get(f"{base}/v1/nothing-here", headers=headers), 404)


# ---------------------------------------------------------------------- audit and disconnects


def test_a_client_that_leaves_mid_stream_frees_its_slot(server, keys, lm):
    base = server[0]
    # The turn's end tokens are banned, so the reply cannot end by itself (a sampled <|end|> in the
    # first tokens made this test fail now and then) before the client leaves.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "中国"}], "max_tokens": 900,
            "temperature": 1.0, "stream": True,
            "logit_bias": {str(i): -100 for i in chat_stop_ids(lm.tokenizer)}}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=auth(keys[1]["full"]),
                      timeout=60) as r:
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
    # The server notices, cancels the job and frees its cache slot long before 900 tokens.
    deadline = time.monotonic() + 20
    while httpx.get(f"{base}/health").json()["engine"]["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{base}/health").json()["engine"]["active"] == 0
    record = wait_for_audit(server[1], request_id)
    assert record["cancelled"] is True and record["key"] == "full"
    assert record["completion_tokens"] < 900


def test_a_client_that_gives_up_on_a_plain_request_frees_its_slot(server, keys, lm):
    """Without streaming too: the server watches for the disconnect while it generates."""
    base = server[0]
    # End-of-text is banned, so the request cannot end by itself before the client gives up.
    body = {"model": MODEL, "prompt": "中国", "max_tokens": 900, "temperature": 1.0,
            "logit_bias": {str(lm.tokenizer.eos_id): -100}}
    before = len(server[1].read_text(encoding="utf-8").splitlines())
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/completions", json=body, headers=auth(keys[1]["full"]), timeout=0.2)
    deadline = time.monotonic() + 20
    while httpx.get(f"{base}/health").json()["engine"]["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{base}/health").json()["engine"]["active"] == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = [json.loads(line) for line in server[1].read_text(encoding="utf-8").splitlines()[before:]]
        given_up = [r for r in new if r["path"] == "/v1/completions"]
        if given_up:
            break
        time.sleep(0.05)
    assert given_up[0]["cancelled"] is True and given_up[0]["completion_tokens"] < 900


def test_logit_bias_bans_and_checks_ids(client, lm):
    banned = lm.tokenizer.encode("的")[0]
    free = client.completions.create(model=MODEL, prompt="中国", max_tokens=30, temperature=1.0, seed=5)
    text = client.completions.create(model=MODEL, prompt="中国", max_tokens=30, temperature=1.0, seed=5,
                                     logit_bias={str(banned): -100}).choices[0].text
    assert banned not in lm.tokenizer.encode(text)
    assert free.choices[0].text != "" and "的" not in text
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="中国", max_tokens=3,
                                  logit_bias={str(lm.tokenizer.vocab_size): 1})
    assert err.value.code == "invalid_logit_bias"


def wait_for_audit(path, request_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["request_id"] == request_id:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id}")


def test_the_audit_log_says_who_called_what_but_not_what_was_said(server, keys, client):
    r = client.completions.with_raw_response.create(model=MODEL, prompt="审计测试", max_tokens=5, temperature=0)
    record = wait_for_audit(server[1], r.headers["x-request-id"])
    reply = r.parse()
    assert record["key"] == "full" and record["path"] == "/v1/completions" and record["status"] == 200
    assert record["prompt_tokens"] == reply.usage.prompt_tokens
    assert record["completion_tokens"] == reply.usage.completion_tokens
    assert record["finish_reason"] == reply.choices[0].finish_reason and record["duration_ms"] > 0
    httpx.get(f"{server[0]}/v1/models")  # no key
    text = server[1].read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    assert any(rec["status"] == 401 and rec["key"] is None for rec in records)
    assert any(rec["status"] == 429 and rec["key"] == "slow" for rec in records)
    assert "审计测试" not in text and reply.choices[0].text not in text.replace('"text"', "")
    assert all("time" in rec and "client" in rec for rec in records)
