"""The audit log's opt-in: prompt and completion text only when the operator asks for it."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from candorlm.lm import LanguageModel
from candorlm.serve.app import create_app
from candorlm.serve.audit import AuditLog


@pytest.mark.parametrize("include_text", [False, True])
def test_text_is_logged_only_when_asked(trained_run, tmp_path, include_text):
    lm = LanguageModel.load(trained_run, device="cpu")
    log = AuditLog(tmp_path / "audit.jsonl", include_text=include_text)
    app = create_app(lm, model_name="m", audit=log)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            r = client.post("/v1/chat/completions", json={"model": "m", "max_tokens": 6, "temperature": 0,
                                                          "messages": [{"role": "user", "content": "秘密的问题"}]})
            assert r.status_code == 200
            answer = r.json()["choices"][0]["message"]["content"]
            client.get("/v1/models?unknown=1")
    finally:
        app.state.engine.stop()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    chat, models = records
    assert chat["status"] == 200 and chat["key"] is None
    assert chat["completion_tokens"] == r.json()["usage"]["completion_tokens"]
    assert models["status"] == 400 and models["path"] == "/v1/models"
    text = (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
    if include_text:
        assert "秘密的问题" in chat["prompt"] and chat["completion"] == [answer]
    else:
        assert "秘密" not in text and "prompt" not in chat and "completion" not in chat
