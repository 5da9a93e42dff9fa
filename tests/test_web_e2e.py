"""The web app in a real browser: headless Chromium (Debian `chromium`) driven by Playwright.

Screenshots go to test-artifacts/screenshots/ (or $CANDOR_SCREENSHOTS).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("CANDOR_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
USER, PASSWORD = "reviewer", "correct-horse-battery"
PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'

pytestmark = pytest.mark.browser
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium for the browser test (.ci/run does)")
    pytestmark = [pytest.mark.browser, pytest.mark.skip(reason="no chromium here: apt-get install chromium")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    (tmp / "users").write_text(f"{USER}:{PASSWORD}\n")
    model = tmp / "model"  # a copy with an attack report and a privacy audit, for the Model tab
    shutil.copytree(trained_tiny, model)
    for cmd in (["attack", str(model), "--recipe", "deepwordbug", "-n", "4", "-q"],
                ["audit", "membership", str(model), "-n", "50"]):
        res = subprocess.run([sys.executable, "-m", "ui.cli", *cmd], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    port, db = _free_port(), tmp / "audit.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", str(model), "--port", str(port),
                             "--auth-file", str(tmp / "users"), "--audit-db", str(db), "--no-browser"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline, seen = time.time() + 240, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "Running on local URL" in line:
            break
        if not line and proc.poll() is not None:
            break
    else:
        proc.kill()
    if proc.poll() is not None or "Running on local URL" not in "".join(seen):
        proc.kill()
        pytest.fail("the app did not start:\n" + "".join(seen))
    yield f"http://127.0.0.1:{port}/", db
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.dialogs = []
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
        pg.goto(server[0])
        pg.get_by_label("username").fill(USER)
        pg.get_by_label("password").fill(PASSWORD)
        pg.get_by_role("button", name="Login").click()
        pg.locator("#message textarea").wait_for(timeout=60_000)
        yield pg
        browser.close()


def _send(pg, text: str, turn: int):
    from playwright.sync_api import expect

    box = pg.locator("#message textarea")
    box.fill(text)
    box.press("Enter")
    expect(pg.locator("#decision")).to_contain_text(f"turn #{turn} ", timeout=60_000)


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


def test_pii_is_redacted_before_it_is_logged_and_audit_finds_the_turn(page, server):
    _send(page, "cancel my order, card 4111 1111 1111 1111, mail jo.smith@example.com", 2)
    assert "Redacted before logging: CREDIT_CARD, EMAIL_ADDRESS" in page.inner_text("#decision")
    page.get_by_role("tab", name="Audit").click()
    page.locator("#audit-search").click()
    table = page.locator("#audit-table")
    from playwright.sync_api import expect
    expect(table).to_contain_text("<CREDIT_CARD>", timeout=30_000)
    text = table.inner_text()
    assert "cancel my order, card <CREDIT_CARD>, mail <EMAIL_ADDRESS>" in text
    assert "4111" not in text and "jo.smith" not in text
    page.locator("#audit-turn-id input").fill("2")
    page.locator("#audit-open").click()
    expect(page.locator("#audit-words")).to_contain_text("CREDIT_CARD", timeout=30_000)
    assert "4111" not in page.inner_text("#audit-detail")
    with page.expect_download() as dl:
        page.locator("#audit-export-csv").click()
        page.locator("#audit-export a").first.click(timeout=30_000)
    exported = Path(dl.value.path()).read_text(encoding="utf-8")
    assert exported.startswith("id,time,session,text,intent") and "<CREDIT_CARD>" in exported and "4111" not in exported
    page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)
    raw = b"".join(p.read_bytes() for p in server[1].parent.iterdir() if p.name.startswith("audit"))
    assert b"<CREDIT_CARD>" in raw and b"4111" not in raw and b"jo.smith" not in raw
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


def test_documented_gradio_client_call(server):
    from gradio_client import Client

    client = Client(server[0], auth=(USER, PASSWORD), verbose=False)
    out = client.predict("where is my package", api_name="/respond")
    assert out["intent"] == "track_order" and 0 <= out["confidence"] <= 1
    assert [w for w, _ in out["attributions"]] == ["where", "is", "my", "package"]
    assert out["reply"] and out["model_version"].startswith("tiny@")
    with pytest.raises(Exception, match="limit is 1000"):
        client.predict("x" * 1001, api_name="/respond")
