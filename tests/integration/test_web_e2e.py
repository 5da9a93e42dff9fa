"""The web app in a real browser: headless Chromium (Debian `chromium`) driven by Playwright.

Screenshots go to test-artifacts/screenshots/ (or $CANDOR_SCREENSHOTS).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, in_ci, start_server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("CANDOR_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
USER, PASSWORD = "reviewer", "correct-horse-battery"
AGENT, AGENT_PASSWORD = "agent", "staple-battery-horse"
PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'

pytestmark = pytest.mark.browser
if not Path(CHROMIUM).exists():
    if in_ci():
        raise RuntimeError("CI must install Debian's chromium for the browser test (.ci/run does)")
    pytestmark = [pytest.mark.browser, pytest.mark.skip(reason="no chromium here: apt-get install chromium")]


@pytest.fixture(scope="module")
def model(trained_tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    model = tmp / "model"  # a copy with an attack report and a privacy audit, for the Model tab
    shutil.copytree(trained_tiny, model)
    for cmd in (["attack", str(model), "--recipe", "deepwordbug", "-n", "4", "-q"],
                ["audit", "membership", str(model), "-n", "50"]):
        res = subprocess.run([sys.executable, "-m", "ui.cli", *cmd], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    return model


@pytest.fixture(scope="module")
def server(model):
    """`candor serve` as a new user starts it: loopback, no auth file, a one-time password printed."""
    port, db = free_port(), model.parent / "audit.sqlite"
    proc, printed = start_server([str(model), "--port", str(port), "--audit-db", str(db)], ROOT)
    found = re.search(r"signin\?token=(\S+)", printed)
    assert found and f"http://127.0.0.1:{port}/signin?token=" in printed, printed
    assert re.search(r"one-time password.*\n\s+" + re.escape(found.group(1)), printed), printed
    assert "monitoring" not in printed.lower()  # Gradio's dashboard (and its key) is off
    yield f"http://127.0.0.1:{port}/", db, found.group(1)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def auth_server(model):
    """With an auth file: an auditor and a user who may only chat."""
    users = model.parent / "users"
    users.write_text(f"{USER}:{PASSWORD}:auditor\n{AGENT}:{AGENT_PASSWORD}\n")
    port = free_port()
    proc, _ = start_server([str(model), "--port", str(port), "--auth-file", str(users), "--audit-db",
                      str(model.parent / "audit-auth.sqlite")], ROOT)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(server, browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg.dialogs, pg.requested, pg.console = [], [], []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("request", lambda r: pg.requested.append(r.url))
    pg.on("console", lambda m: pg.console.append(m.text))
    pg.goto(server[0])  # on loopback anyone may chat: no sign-in page
    pg.locator("#message textarea").wait_for(timeout=60_000)
    yield pg
    pg.close()


def _send(pg, text: str, turn: int):
    from playwright.sync_api import expect

    box = pg.locator("#message textarea")
    box.fill(text)
    box.press("Enter")
    expect(pg.locator("#decision")).to_contain_text(f"turn #{turn} ", timeout=60_000)  # the reply, first
    expect(pg.locator("#decision")).to_contain_text("explanation delta", timeout=60_000)  # then its explanation


def test_chat_shows_reply_intent_confidence_and_highlighted_words(page):
    _send(page, "I want to cancel the order", 1)
    decision = page.inner_text("#decision")
    assert re.search(r"Intent: cancel_order · confidence (0\.\d\d|1\.00) · fallback: no", decision), decision
    chat = page.inner_text("#chatbot")
    assert "I want to cancel the order" in chat
    assert "cancel order" in chat  # both of the tiny bot's cancel_order replies say it
    spans = page.locator("#attributions .textspan")
    words = [s.strip() for s in spans.all_inner_texts() if s.strip()]
    assert words == ["I", "want", "to", "cancel", "the", "order"]
    assert page.locator("#ranking").inner_text().count("%") >= 2
    page.screenshot(path=str(SHOTS / "chat.png"))


def test_audit_needs_the_printed_password_and_shows_only_redacted_text(page, server):
    from playwright.sync_api import expect

    _send(page, "Hi, my name is Margaret Okonkwo, cancel my order, card 4111 1111 1111 1111, mail jo.smith@example.com",
          2)
    assert "Redacted before logging: CREDIT_CARD, EMAIL_ADDRESS, PERSON" in page.inner_text("#decision")
    page.get_by_role("tab", name="Audit").click()
    expect(page.locator("#audit-locked")).to_contain_text("one-time password")
    assert not page.locator("#audit-search").is_visible()
    assert page.request.get(server[0] + "audit/export?fmt=csv").status == 403
    page.goto(server[0] + "signin")
    page.locator("#password").fill("not-the-password")
    page.locator("#signin").click()
    expect(page.locator("#signin-error")).to_contain_text("Wrong password")
    page.locator("#password").fill(server[2])
    page.locator("#signin").click()
    page.locator("#message textarea").wait_for(timeout=60_000)
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-search").click()
    table = page.locator("#audit-table")
    expect(table).to_contain_text("<PERSON>", timeout=30_000)
    text = table.inner_text()
    assert "Hi, my name is <PERSON>, cancel my order, card <CREDIT_CARD>, mail <EMAIL_ADDRESS>" in text
    assert "Okonkwo" not in text and "4111" not in text and "jo.smith" not in text
    page.locator("#audit-turn-id input").fill("2")
    page.locator("#audit-open").click()
    expect(page.locator("#audit-words")).to_contain_text("CREDIT_CARD", timeout=30_000)
    assert "4111" not in page.inner_text("#audit-detail") and "Okonkwo" not in page.inner_text("#audit-detail")
    with page.expect_download() as dl:
        page.locator("#audit-export-csv").click()
    exported = Path(dl.value.path()).read_text(encoding="utf-8")
    assert exported.startswith("id,time,session,text,intent") and "<PERSON>" in exported
    assert "4111" not in exported and "Okonkwo" not in exported
    # the auditor corrects the turn: kept in the store beside its redacted text (`candor data corrections` exports it)
    page.locator("#audit-right-intent input").fill("track_order")
    page.keyboard.press("Enter")
    page.locator("#audit-correct").click()
    expect(page.locator("#audit-corrected")).to_contain_text("to track_order", timeout=30_000)
    from bot.store import AuditStore
    (row,) = AuditStore(str(server[1]), redact=lambda t: t).corrections()
    assert row["id"] == 2 and row["correct_intent"] == "track_order" and row["corrected_by"]
    page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)
    raw = b"".join(p.read_bytes() for p in server[1].parent.iterdir() if p.name.startswith("audit"))
    assert b"<PERSON>" in raw and b"4111" not in raw and b"jo.smith" not in raw and b"Okonkwo" not in raw
    page.get_by_role("tab", name="Chat").click()


def test_html_payload_renders_as_text_everywhere(page):
    _send(page, PAYLOAD, 3)
    assert PAYLOAD in page.inner_text("#chatbot")
    assert page.locator("#chatbot img[src='x'], #chatbot b, #attributions b").count() == 0
    assert page.evaluate("window.__xss") is None and page.dialogs == []
    page.screenshot(path=str(SHOTS / "payload.png"))
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-search").click()
    from playwright.sync_api import expect
    expect(page.locator("#audit-table")).to_contain_text("<b>bold</b>", timeout=30_000)
    assert page.locator("#audit-table img, #audit-table b").count() == 0
    assert page.evaluate("window.__xss") is None
    page.get_by_role("tab", name="Model").click()
    from playwright.sync_api import expect as ex
    ex(page.locator("#model-privacy")).to_contain_text("WITHOUT differential privacy")
    ex(page.locator("#model-privacy")).to_contain_text("Membership inference")  # the audit beside the guarantee
    robustness = page.inner_text("#model-robustness")
    assert "attack success rate" in robustness and "deepwordbug" in robustness and "Random typos" in robustness
    assert "No robustness report" not in robustness and "Robustness" not in page.inner_text("#model-card")
    page.screenshot(path=str(SHOTS / "model.png"), full_page=True)


def test_documented_gradio_client_call(auth_server):
    from gradio_client import Client

    client = Client(auth_server, auth=(AGENT, AGENT_PASSWORD), verbose=False)
    out = client.predict("where is my package", api_name="/respond")  # the reply first: no explanation yet
    assert out["intent"] == "track_order" and 0 <= out["confidence"] <= 1 and out["attributions"] == []
    out = client.predict("where is my package", True, api_name="/respond")  # wait_for_explanation (after the first)
    assert [w for w, _ in out["attributions"]] == ["[earlier turns]", "where", "is", "my", "package"]
    assert out["reply"] and out["model_version"].startswith("tiny@")
    with pytest.raises(Exception, match="limit is 1000"):
        client.predict("x" * 1001, api_name="/respond")


def _signed_in(url: str, user: str, password: str):
    import httpx

    client = httpx.Client(base_url=url, timeout=60)
    assert client.post("login", data={"username": user, "password": password}).status_code == 200
    return client


def test_only_auditors_reach_the_audit_log(auth_server, browser):
    from playwright.sync_api import expect

    agent, reviewer = _signed_in(auth_server, AGENT, AGENT_PASSWORD), _signed_in(auth_server, USER, PASSWORD)
    assert agent.get("audit/export?fmt=json").status_code == 403
    assert reviewer.get("audit/export?fmt=json").status_code == 200
    pg = browser.new_page()
    pg.goto(auth_server)
    pg.get_by_label("username").fill(AGENT)
    pg.get_by_label("password").fill(AGENT_PASSWORD)
    pg.get_by_role("button", name="Login").click()
    pg.locator("#message textarea").wait_for(timeout=60_000)
    pg.get_by_role("tab", name="Audit").click()
    expect(pg.locator("#audit-locked")).to_contain_text("Only auditors")
    assert not pg.locator("#audit-search").is_visible()
    pg.close()


def test_one_user_cannot_read_another_users_stream(auth_server):
    agent, reviewer = _signed_in(auth_server, AGENT, AGENT_PASSWORD), _signed_in(auth_server, USER, PASSWORD)
    config = agent.get("config").json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "respond")
    body = {"data": ["where is my package", False], "fn_index": fn, "session_hash": "agents-own-session",
            "event_data": None, "trigger_id": None}
    assert agent.post("gradio_api/queue/join", json=body).status_code == 200
    stolen = reviewer.get("gradio_api/queue/data", params={"session_hash": "agents-own-session"})
    assert stolen.status_code == 403 and "another user" in stolen.text
    assert reviewer.post("gradio_api/queue/join", json=body).status_code == 403
    with agent.stream("GET", "gradio_api/queue/data", params={"session_hash": "agents-own-session"}) as own:
        assert own.status_code == 200
        text = ""
        for chunk in own.iter_text():
            text += chunk
            if "process_completed" in text:
                break
    assert "track_order" in text


def test_load_benchmark_short_form(server):
    """The short form of benchmarks/load.py: concurrent API users against the running app, no errors."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from load import run_load, summary
    finally:
        sys.path.pop(0)
    s = summary(run_load(server[0], users=4, turns=3, messages=["where is my package", "cancel my order"],
                         time_limit=240))
    assert s["errors"] == 0 and s["ok"] == 12 and s["p95_s"] > 0 and not s["timed_out"]
    with pytest.raises(SystemExit, match="only loads a server on this machine"):
        run_load("http://example.org/", 1, 1, ["hi"])


def test_the_page_loads_nothing_from_third_parties_and_breaks_no_csp_rule(page, server):
    assert any("queue/join" in u for u in page.requested)  # the earlier tests chatted, signed in, audited on it
    others = [u for u in page.requested if not u.startswith(server[0]) and not u.startswith(("data:", "blob:"))]
    assert others == []  # no CDN script, no Google fonts
    assert not [m for m in page.console if "Content Security Policy" in m], page.console


def test_the_http_surface_is_closed_by_default(server):
    """The review's findings (issue 30), against the real server: only the app's routes answer; the Host is checked;
    a queue join needs a server-issued identity; the page has a CSP and no third-party script; sign-in is
    rate-limited; /gradio_api/call/<api>/<session> (which streamed another user's raw message) is gone."""
    import hashlib

    import httpx

    url = server[0]
    c = httpx.Client(base_url=url, timeout=30)
    page = c.get("")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"
    assert "cdnjs" not in page.text and "googleapis" not in page.text and "gstatic" not in page.text
    for script in re.findall(r"<script\b(?![^>]*\bsrc=)[^>]*>(.*?)</script>", page.text, re.S):
        digest = __import__("base64").b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp  # the page's own inline scripts, by hash; no 'unsafe-inline'
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "candor-client=" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
    for method, path in [("GET", "gradio_api/call/respond/abc"), ("POST", "gradio_api/call/respond"),
                         ("POST", "gradio_api/upload"), ("GET", "gradio_api/upload_progress"), ("GET", "monitoring"),
                         ("GET", "monitoring/summary"), ("GET", "gradio_api/deep_link"), ("POST", "gradio_api/api/respond"),
                         ("GET", "gradio_api/vibe-code"), ("GET", "gradio_api/proxy=http://example.com"),
                         ("GET", "docs"), ("GET", "no/such/page"), ("POST", "gradio_api/reset")]:
        r = c.request(method, path)
        assert r.status_code == 404 and "Traceback" not in r.text, (method, path, r.status_code)
    rebinding = httpx.get(url, headers={"Host": "attacker.example"})
    assert rebinding.status_code == 421  # DNS rebinding: a page on another name cannot reach this server
    assert httpx.get(url + "healthz").json() == {"status": "ok"} and httpx.get(url + "readyz").status_code == 200
    assert "candor_reply_seconds" in httpx.get(url + "metrics").text
    r = httpx.post(url + "v1/chat", json={"session": "s", "message": "hi"})
    assert r.status_code == 404 and "--tokens-file" in r.json()["error"]  # no tokens file: the REST API is off
    config = c.get("config").json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "respond")
    body = {"data": ["where is my package", False], "fn_index": fn, "session_hash": "no-identity"}
    assert httpx.post(url + "gradio_api/queue/join", json=body).status_code == 403  # no cookie: no identity
    forged = httpx.post(url + "gradio_api/queue/join", json=body, cookies={"candor-client": "me.0000"})
    assert forged.status_code == 403  # a cookie this server did not sign is no identity
    assert c.post("gradio_api/queue/join", json={**body, "session_hash": "with-identity"}).status_code == 200
    attempts = [httpx.post(url + "signin", data={"password": f"guess-{i}"}).status_code for i in range(7)]
    assert attempts[0] == 403 and attempts[-1] == 429
    out = httpx.get(url + "signout", follow_redirects=False)
    assert out.status_code == 303 and "candor-audit=" in out.headers["set-cookie"]
