"""Two `candor serve` replicas on one real PostgreSQL server act as one bot: a conversation that moves to
the other replica goes on, and each replica's Audit export shows every turn."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bot.store import AuditStore
from tests.conftest import free_port, start_server
from ui.service import ChatService

ROOT = Path(__file__).resolve().parents[2]
KEY = "replicas-share-this-session-key"


def test_a_conversation_moves_between_services_on_one_database(trained_tiny, postgres, monkeypatch):
    monkeypatch.setenv("CANDOR_SESSION_KEY", KEY)
    url = postgres.new_database()
    a, b = ChatService(trained_tiny, url, explain_steps=8), ChatService(trained_tiny, url, explain_steps=8)
    a.respond("cancel my order", "s1")
    b.respond("where is my package", "s1")  # the load balancer sent the next turn elsewhere
    assert [t.user for t in a.conversation("s1").turns] == ["cancel my order", "where is my package"]
    b.keep("s1", 1)  # undo on one replica
    assert [t.intent for t in a.conversation("s1").turns] == ["cancel_order"]
    a.reset("s1")
    assert b.conversation("s1").turns == [] and b.store.count() == 2


@pytest.fixture(scope="module")
def replicas(trained_tiny, tmp_path_factory):
    from tests.conftest import Postgres

    server = Postgres()
    url = server.new_database()
    users = tmp_path_factory.mktemp("replicas") / "users"
    users.write_text("reviewer:correct-horse-battery:auditor\n")
    procs, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            proc, _ = start_server([str(trained_tiny), "--port", str(port), "--audit-db", url, "--auth-file",
                                    str(users), "--explain-steps", "8"], ROOT, env={"CANDOR_SESSION_KEY": KEY})
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{port}/")
        yield urls, url
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        server.stop()


def test_two_serve_replicas_on_postgresql_act_as_one_bot(replicas):
    import httpx
    from gradio_client import Client

    (first, second), url = replicas
    auth = ("reviewer", "correct-horse-battery")
    a, b = Client(first, auth=auth, verbose=False), Client(second, auth=auth, verbose=False)
    b.session_hash = a.session_hash  # the same session, its second turn landing on the other replica
    assert a.predict("cancel my order", api_name="/respond")["intent"] == "cancel_order"
    assert b.predict("where is my package", api_name="/respond")["intent"] == "track_order"
    store = AuditStore(url, lambda t: t, session_key=KEY.encode())
    turns = store.conversation(f"api-user:{auth[0]}/{a.session_hash}")
    assert [t[2] for t in turns] == ["cancel_order", "track_order"]  # replica 2 continued replica 1's conversation
    for replica in (first, second):
        with httpx.Client(base_url=replica, timeout=60) as web:
            assert web.post("login", data={"username": auth[0], "password": auth[1]}).status_code == 200
            rows = web.get("audit/export?fmt=json").json()
        assert sorted(r["intent"] for r in rows) == ["cancel_order", "track_order"]  # each replica sees every turn
        assert len({r["session"] for r in rows}) == 1


def test_serve_refuses_an_unreachable_database(trained_tiny):
    import subprocess

    port = free_port()
    done = subprocess.run([sys.executable, "-m", "ui.cli", "serve", str(trained_tiny), "--no-browser", "--port",
                           str(port), "--audit-db", f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "audit database" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
