"""The REST API (ui/api.py) and the reply before its explanation (ui/service.py), in process: bearer tokens with
roles, rate limits, JSON errors, the Rasa webhook, the auditors' turns, and a server killed between a reply and its
explanation losing nothing."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient

from bot.spec import EARLIER
from ui.service import ChatService

CHAT, AUDITOR = "c" * 40, "a" * 40
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def service(trained_tiny, tmp_path_factory):
    return ChatService(trained_tiny, str(tmp_path_factory.mktemp("rest") / "audit.sqlite"), explain_steps=8)


def _client(service, tmp_path, rate=100.0):
    from ui.api import build_api
    from ui.auth import read_tokens

    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# integrations\nwidget:chat:{CHAT}\nreviewer:auditor:{AUDITOR}\n", encoding="utf-8")
    return TestClient(build_api(service, read_tokens(tokens), rate=rate), base_url="http://127.0.0.1")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_the_reply_comes_before_its_explanation_which_is_stored_with_the_turn(service, tmp_path):
    client = _client(service, tmp_path)
    service.explanations.paused.set()  # the explainer is busy: the reply must not wait for it
    try:
        r = client.post("/v1/chat", json={"session": "s1", "message": "cancel my order please"}, headers=bearer(CHAT))
        assert r.status_code == 200, r.text
        turn = r.json()
        assert turn["intent"] == "cancel_order" and turn["reply"] and turn["attributions"] is None
        assert service.store.get(turn["turn_id"])["explained"] is None  # logged, complete but for its explanation
        assert turn["explanation"] == f"/v1/turns/{turn['turn_id']}"
    finally:
        service.explanations.paused.clear()
    deadline = time.time() + 60
    while service.store.get(turn["turn_id"])["explained"] is None and time.time() < deadline:
        time.sleep(0.05)
    row = service.store.get(turn["turn_id"])
    assert row["explained"] == "after the reply" and [w for w, _ in row["attributions"]] == ["cancel", "my", "order",
                                                                                             "please"]
    waited = client.post("/v1/chat", json={"session": "s1b", "message": "where is my package",
                                           "wait_for_explanation": True}, headers=bearer(CHAT)).json()
    assert [w for w, _ in waited["attributions"]] == ["where", "is", "my", "package"]


def test_tokens_roles_and_json_errors(service, tmp_path):
    client = _client(service, tmp_path)
    msg = {"session": "s2", "message": "where is my package"}
    r = client.post("/v1/chat", json=msg)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "bearer token" in r.json()["error"]
    assert client.post("/v1/chat", json=msg, headers=bearer("x" * 40)).status_code == 401
    r = client.post("/v1/chat", json=msg, headers=bearer(AUDITOR))
    assert r.status_code == 403 and "chat role" in r.json()["error"]
    r = client.get("/v1/turns", headers=bearer(CHAT))
    assert r.status_code == 403 and "auditor role" in r.json()["error"]
    bad = [(b'{"session": "s", "message": ', 400, "Malformed JSON"), (b"[" * 50_000, 400, "Malformed JSON"),
           (b'"just text"', 400, "JSON object"), (b'{"session": "s"}', 422, "message"),
           (b'{"session": "a b", "message": "hi"}', 422, "session"), (b'{"session": 5, "message": "hi"}', 422, "session")]
    for body, status, says in bad:
        r = client.post("/v1/chat", content=body, headers={**bearer(CHAT), "content-type": "application/json"})
        assert r.status_code == status and says in r.json()["error"] and "Traceback" not in r.text, body[:40]
    r = client.post("/v1/chat", json={"session": "s", "message": "y" * 5000}, headers=bearer(CHAT))
    assert r.status_code == 400 and "refused" in r.json()["error"]
    r = client.get("/v1/turns?since=yesterday", headers=bearer(AUDITOR))
    assert r.status_code == 400 and "not a date" in r.json()["error"]
    assert client.get("/v1/turns?page=0", headers=bearer(AUDITOR)).status_code == 422
    assert client.get("/v1/turns/999999", headers=bearer(AUDITOR)).json()["error"] == "No turn #999999."
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    assert client.get("/v1/chat").status_code == 405


def test_a_token_over_its_rate_gets_429_with_retry_after(service, tmp_path):
    client = _client(service, tmp_path, rate=1.0)  # bursts of 2
    codes = [client.get("/v1/turns", headers=bearer(AUDITOR)).status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and codes[-1] == 429
    r = client.get("/v1/turns", headers=bearer(AUDITOR))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2 and "retry after" in r.json()["error"]
    assert client.get("/healthz").status_code == 200  # the load balancer's endpoints have no token, no limit


def test_the_rasa_webhook_answers_as_rasa_does_and_conversations_are_per_token(service, tmp_path):
    client = _client(service, tmp_path)
    r = client.post("/webhooks/rest/webhook", json={"sender": "user-7", "message": "I want a refund please"},
                    headers=bearer(CHAT))
    assert r.status_code == 200 and r.json() == [{"recipient_id": "user-7", "text": r.json()[0]["text"]}]
    assert r.json()[0]["text"]
    assert len(service.conversation("rest:widget/user-7").turns) == 1
    assert service.conversation("user-7").turns == []  # a session named by a token is that token's


def test_auditors_read_the_turns_with_filters_paging_and_explanations_on_reading(service, tmp_path):
    client = _client(service, tmp_path)
    for m in ("cancel my order", "where is my package", "cancel it now please"):
        client.post("/v1/chat", json={"session": "s3", "message": m}, headers=bearer(CHAT))
    r = client.get("/v1/turns?intent=cancel_order&page_size=1&page=2", headers=bearer(AUDITOR)).json()
    assert r["total"] >= 2 and r["page"] == 2 and r["page_size"] == 1 and len(r["turns"]) == 1
    assert r["turns"][0]["intent"] == "cancel_order" and "context" not in r["turns"][0]
    everything = client.get("/v1/turns?page_size=500", headers=bearer(AUDITOR)).json()
    assert everything["total"] == service.store.count() and len(everything["turns"]) == min(500, everything["total"])
    assert client.get("/v1/turns?fallback=maybe", headers=bearer(AUDITOR)).status_code == 422
    spec = client.get("/v1/openapi.json").json()
    assert {"/v1/chat", "/v1/turns", "/v1/turns/{turn_id}", "/webhooks/rest/webhook"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_health_readiness_and_metrics(service, tmp_path):
    client = _client(service, tmp_path)
    client.post("/v1/chat", json={"session": "s4", "message": "where is my package"}, headers=bearer(CHAT))
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "problems": []}
    text = client.get("/metrics").text
    assert "candor_reply_seconds_bucket" in text and "candor_explanations_pending" in text
    assert 'candor_turns_total{fallback="no"}' in text
    real = service.store.ping
    service.store.ping = lambda: 1 / 0
    try:
        r = client.get("/readyz")
        assert r.status_code == 503 and "audit store" in r.json()["problems"][0]
    finally:
        service.store.ping = real


def test_the_rest_api_is_off_without_a_tokens_file(service):
    from ui.api import build_api

    client = TestClient(build_api(service, None))
    r = client.post("/v1/chat", json={"session": "s", "message": "hi"}, headers=bearer(CHAT))
    assert r.status_code == 404 and "--tokens-file" in r.json()["error"]
    assert client.get("/healthz").status_code == 200


KILLED = """
import os, signal, sys
from bot.spec import EARLIER
from ui.service import ChatService
service = ChatService(sys.argv[1], sys.argv[2], explain_steps=8)
service.explanations.paused.set()  # the explanation has not run yet when the server dies
first = service.respond("hello, cancel my order please", "s")
a = service.respond("it is number 4432", "s")
print(a.turn_id, a.intent, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_server_killed_between_reply_and_explanation_loses_nothing(trained_tiny, tmp_path):
    db = str(tmp_path / "audit.sqlite")
    out = subprocess.run([sys.executable, "-c", KILLED, str(trained_tiny), db], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "CANDOR_NER": "none"})
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    turn_id, intent = out.stdout.split()
    service = ChatService(trained_tiny, db, explain_steps=8)
    row = service.store.get(int(turn_id))  # complete: text, reply, intent, the earlier text it was read after
    assert row["intent"] == intent and row["reply"] and row["explained"] is None and row["attributions"] == []
    assert row["context"] == ["hello, cancel my order please"]
    read = service.turn(int(turn_id))
    assert read["explained"] == "on reading"
    assert [w for w, _ in read["attributions"]] == [EARLIER, "it", "is", "number", "4432"]
    # the same as it would have been after the reply: the explainer on the same text, intent and earlier turns
    expected = service.explainer.explain("it is number 4432", intent, ["hello, cancel my order please"])
    assert [s for _, s in read["attributions"]] == pytest.approx([s for _, s in expected.attributions()], abs=1e-3)
    assert service.turn(int(turn_id)) == read  # computed once, then read as stored
    assert json.loads(json.dumps(read))  # and exportable
