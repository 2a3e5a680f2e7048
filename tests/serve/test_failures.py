"""What a caller sees when something fails inside the server: a generic 500 in the API's error
format naming a request id, never a path, a stack trace or an exception's text (those go to the
server's log). And an audit log that stops being writable while serving stops the serving."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
from starlette.testclient import TestClient

from candorlm.lm import LanguageModel
from candorlm.serve.app import create_app
from candorlm.serve.audit import AuditLog
from candorlm.serve.auth import KeyStore, add_key

COMPLETION = {"model": "m", "prompt": "今天", "max_tokens": 3, "temperature": 0}
SECRET = "/home/alice/private/notes.txt"  # stands for any internal detail


@pytest.fixture(scope="module")
def lm(trained_run):
    return LanguageModel.load(trained_run, device="cpu")


@pytest.fixture
def app_for(lm):
    made = []

    def make(**kwargs):
        app = create_app(lm, model_name="m", **kwargs)
        made.append(app)
        return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)

    yield make
    for app in made:
        app.state.engine.stop()


def assert_generic_500(response, *hidden: str) -> dict:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "server_error" and set(error) == {"message", "type", "param", "code"}
    for text in (*hidden, "Traceback", "File \"", ".py", "Error:"):
        assert text not in response.text, (text, response.text)
    return error


def test_a_broken_keys_file_is_a_generic_500_for_any_caller(app_for, tmp_path, caplog):
    path = tmp_path / "keys.json"
    key = add_key(path, "alice", "generate,admin")
    with app_for(keys=KeyStore(path), audit=AuditLog(tmp_path / "audit.jsonl")) as client:
        assert client.post("/v1/completions", json=COMPLETION, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        path.write_text('{"version": 1, "keys": [{"name": "alice", "oops": tr')  # damaged while serving
        with caplog.at_level(logging.ERROR):
            for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer nonsense"}, {}):
                r = client.post("/v1/completions", json=COMPLETION, headers=headers)
                error = assert_generic_500(r, str(tmp_path), "keys.json", "JSON", "Expecting", "version")
                assert r.headers["x-request-id"] in error["message"]
            assert_generic_500(client.get("/v1/admin/keys", headers={"Authorization": f"Bearer {key}"}), str(tmp_path))
        logged = [r.getMessage() for r in caplog.records]
        assert sum("keys.json is not a candorlm keys file" in m for m in logged) == 1  # once, not per request
        add_key(tmp_path / "fresh.json", "alice", "generate")
        os.replace(tmp_path / "fresh.json", path)  # fixed: a key of the new file works at once
        assert client.post("/v1/completions", json=COMPLETION, headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_a_failure_inside_a_handler_is_a_generic_500_and_a_logged_traceback(app_for, tmp_path, caplog):
    with app_for(audit=AuditLog(tmp_path / "audit.jsonl")) as client:
        service = client.app.state.service

        def broken(body):
            raise OSError(f"[Errno 13] Permission denied: '{SECRET}'")

        service.explain = broken
        with caplog.at_level(logging.ERROR):
            r = client.post("/v1/explain", json={"model": "m", "prompt": "今天", "target": "天气"})
        error = assert_generic_500(r, SECRET, "Permission", "Errno")
        assert r.headers["x-request-id"] in error["message"] and error["code"] == "internal_error"
    assert SECRET in caplog.text and r.headers["x-request-id"] in caplog.text  # the operator can find it
    record = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()][-1]
    assert record["status"] == 500 and record["path"] == "/v1/explain"


def test_a_failing_model_step_tells_the_caller_nothing_of_it(app_for, tmp_path, caplog, monkeypatch):
    with app_for(audit=AuditLog(tmp_path / "audit.jsonl")) as client:
        engine = client.app.state.engine

        def broken_step():
            raise RuntimeError(f"CUDA error: device-side assert in {SECRET}")

        monkeypatch.setattr(engine, "_step", broken_step)
        with caplog.at_level(logging.ERROR):
            plain = client.post("/v1/completions", json=COMPLETION)
            stream = client.post("/v1/completions", json={**COMPLETION, "stream": True})
        error = assert_generic_500(plain, SECRET, "CUDA", "RuntimeError")
        assert error["code"] == "generation_failed" and plain.headers["x-request-id"] in error["message"]
        assert stream.status_code == 200 and SECRET not in stream.text and "RuntimeError" not in stream.text
        events = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "generation_failed" and stream.text.rstrip().endswith("[DONE]")
    assert SECRET in caplog.text


@pytest.mark.parametrize("body,message", [
    (b"[" * 100_000, "nests arrays or objects too deeply"),
    (b'{"model": "m", "prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nests arrays or objects too deeply"),
    ("{\"model\": \"m\", \"prompt\": \"今天\"}".encode("gbk"), "is not UTF-8 text"),
    (b'{"model": "m", "prompt": ', "is not valid JSON"),
])
def test_an_unreadable_body_is_named_for_what_it_is(app_for, body, message):
    with app_for() as client:
        r = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert "UTF-8?" not in r.text


def test_an_audit_log_that_fails_while_serving_stops_the_serving_until_it_is_back(app_for, tmp_path, caplog):
    path = tmp_path / "logs" / "audit.jsonl"
    audit = AuditLog(path)
    with app_for(audit=audit) as client:
        assert client.get("/v1/models").status_code == 200
        path.unlink()
        path.mkdir()  # from now on every write fails (IsADirectoryError), even as root
        with caplog.at_level(logging.WARNING):
            served = client.post("/v1/completions", json=COMPLETION)
            assert served.status_code == 200  # its answer was done before its record failed...
            refused = [client.post("/v1/completions", json=COMPLETION), client.get("/v1/models")]
            for r in refused:  # ... and from then on nothing is served unaudited
                assert r.status_code == 500 and r.json()["error"]["code"] == "audit_log_unavailable"
                assert str(path) not in r.text and "IsADirectory" not in r.text
            health = client.get("/health")
            assert health.status_code == 500 and health.json()["error"]["code"] == "audit_log_unavailable"
            assert client.get("/").status_code == 200  # the page itself is not an API call
            path.rmdir()  # fixed
            back = client.post("/v1/completions", json=COMPLETION)
            assert back.status_code == 200 and client.get("/health").status_code == 200
    assert "AUDIT LOG FAILING" in caplog.text and str(path) in caplog.text and "can be written again" in caplog.text
    records = [json.loads(line) for line in path.read_text().splitlines()]  # the first went with the old file
    answers = [served, *refused, back]
    assert [r["request_id"] for r in records] == [a.headers["x-request-id"] for a in answers]  # none lost or twice
    assert [r["status"] for r in records] == [200, 500, 500, 200]
    assert [r.get("refused") for r in records] == [None, "audit log unwritable", "audit log unwritable", None]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a re-created log is private too


def test_held_records_that_are_never_written_are_counted_at_shutdown(lm, tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    app = create_app(lm, model_name="m", audit=audit)
    with caplog.at_level(logging.ERROR):
        with TestClient(app, base_url="http://127.0.0.1") as client:
            path.unlink()
            path.mkdir()
            client.get("/v1/models")
            client.get("/v1/models")
    assert "2 audit records could not be written" in caplog.text
