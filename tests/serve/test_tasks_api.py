"""Serving fine-tuned runs that are not language models: a sentiment run answers
/v1/classifications, a translate run /v1/completions (an OpenAI text completion), behind the
same guards as every route (Host check, keys and scopes, audit log), with the same predictions
as `candorlm.load_task(RUN).predict`."""

import json

import pytest
from fastapi.testclient import TestClient

import candorlm
from candorlm.errors import CandorError
from candorlm.serve.audit import AuditLog
from candorlm.serve.auth import KeyStore, add_key
from candorlm.serve.tasks import create_task_app
from tests.tasks.test_predict import runs  # noqa: F401 (the module fixture: one tiny run per task)

pytestmark = pytest.mark.slow


def client(app):
    return TestClient(app, base_url="http://127.0.0.1")


def test_classification_route(runs, tmp_path):  # noqa: F811
    model = candorlm.load_task(runs["sentiment"])
    keys = tmp_path / "keys.json"
    good = add_key(keys, "alice", "generate")
    other = add_key(keys, "bob", "explain")
    audit = AuditLog(tmp_path / "audit.jsonl")
    app = create_task_app(model, model_name="sent", keys=KeyStore(keys), audit=audit)
    with client(app) as c:
        body = {"model": "sent", "input": ["这个手机很好用", "质量太差了"]}
        assert c.post("/v1/classifications", json=body).status_code == 401  # keys are needed
        assert c.post("/v1/classifications", json=body, headers={"Authorization": f"Bearer {other}"}).status_code == 403
        r = c.post("/v1/classifications", json=body, headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        expected = model.predict(body["input"])
        assert [{k: d[k] for k in ("label", "probability", "probabilities")} for d in data] == expected
        assert [d["index"] for d in data] == [0, 1]
        wrong = c.post("/v1/classifications", json={"model": "other", "input": "好"},
                       headers={"Authorization": f"Bearer {good}"})
        assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
        empty = c.post("/v1/classifications", json={"model": "sent", "input": []},
                       headers={"Authorization": f"Bearer {good}"})
        assert empty.status_code == 400 and "Traceback" not in empty.text
        rebinding = c.post("/v1/classifications", json=body, headers={"Authorization": f"Bearer {good}",
                                                                       "Host": "evil.example"})
        assert rebinding.status_code == 400
        assert c.get("/health").json()["task"] == "sentiment"
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r.get("status") == 200 and r.get("path") == "/v1/classifications" for r in records), records


def test_translation_is_a_completion(runs):  # noqa: F811
    model = candorlm.load_task(runs["translate"])
    with client(create_task_app(model, model_name="pinyin")) as c:
        r = c.post("/v1/completions", json={"model": "pinyin", "prompt": ["ni hao 1", "bei jing 2"]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "text_completion"
        assert [ch["text"] for ch in out["choices"]] == [o["translation"] for o in model.predict(["ni hao 1", "bei jing 2"])]
        assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
        assert c.post("/v1/classifications", json={"model": "pinyin", "input": "x"}).status_code == 404


def test_decoder_task_runs_are_language_models(runs):  # noqa: F811
    with pytest.raises(CandorError, match="serve it as a language model"):
        create_task_app(candorlm.load_task(runs["chat"]), model_name="chat")


def test_candorlm_serve_picks_the_task_routes(runs):  # noqa: F811
    import httpx

    from tests.serve.serve_helpers import live_server

    with live_server(runs["sentiment"], "--model-name", "sent") as base:
        r = httpx.post(f"{base}/v1/classifications", json={"model": "sent", "input": "很好用"}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["label"] in ("neg", "pos")
