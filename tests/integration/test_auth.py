"""Who may open the web app."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ui.auth import SIGNIN_COOKIE, Access, Account, AuthError, OneTimeSignIn, check_binding, checker, read_users

ROOT = Path(__file__).resolve().parents[2]


def test_localhost_needs_no_sign_in_but_anywhere_else_does():
    for host in ("127.0.0.1", "localhost", "::1"):
        check_binding(host, None)
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(AuthError, match=f"refusing to bind to {host} without authentication"):
            check_binding(host, None)
        check_binding(host, {"ana": Account("long-enough")})


def test_auth_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "users"
    f.write_text("# reviewers\nana:correct-horse\n\nbob\n")
    with pytest.raises(AuthError, match=rf"{f}:4: expected user:password"):
        read_users(f)
    f.write_text("ana:short\n")
    with pytest.raises(AuthError, match=rf"{f}:1: the password of 'ana' is shorter than 8"):
        read_users(f)
    f.write_text("# nobody\n")
    with pytest.raises(AuthError, match="no users"):
        read_users(f)
    with pytest.raises(AuthError, match="not found"):
        read_users(tmp_path / "missing")
    f.write_text("ana:correct-horse:auditor\nbob:pass:with:colons\ncy:also-long:user\n")
    users = read_users(f)
    assert users == {"ana": Account("correct-horse", "auditor"), "bob": Account("pass:with:colons", "user"),
                     "cy": Account("also-long", "user")}
    f.write_text("ana:correct-horse\nana:other-horse\n")
    with pytest.raises(AuthError, match=rf"{f}:2: 'ana' is listed twice"):
        read_users(f)
    f.write_text("ana:correct-horse:Auditor\n")
    with pytest.raises(AuthError, match=rf"{f}:1: role 'Auditor' — roles are lower case"):
        read_users(f)
    ok = checker(users)
    assert ok("ana", "correct-horse") and ok("bob", "pass:with:colons")
    assert not ok("ana", "wrong") and not ok("eve", "correct-horse") and not ok("ana", "")


def test_serve_refuses_a_public_bind_without_auth_before_loading_anything(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ui.cli", "serve", str(tmp_path / "nomodel"), "--host", "0.0.0.0",
                          "--no-browser"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "refusing to bind to 0.0.0.0 without authentication" in res.stderr


class _Req:
    """Stands for a request: Gradio's signed-in user name and the cookies."""

    def __init__(self, username=None, cookies=None):
        self.username, self.cookies = username, cookies or {}


def test_only_auditors_may_audit_when_everyone_signs_in():
    access = Access({"ana": Account("correct-horse", "auditor"), "bob": Account("battery-staple")})
    assert access.may_audit(_Req("ana")) and access.role(_Req("ana")) == "auditor"
    assert not access.may_audit(_Req("bob")) and access.role(_Req("bob")) == "user"
    assert not access.may_audit(_Req()) and not access.may_audit(_Req("mallory"))
    assert access.auditors() == ["ana"]


def test_one_time_password_is_new_each_start_and_its_cookie_cannot_be_forged():
    a, b = OneTimeSignIn(), OneTimeSignIn()
    assert a.password != b.password and len(a.password) >= 24
    assert a.check(a.password) and not a.check(b.password) and not a.check("") and not a.check(None)
    cookie = a.cookie(now=1000.0)
    assert a.valid(cookie, now=1001.0) and not b.valid(cookie, now=1001.0)  # signed with a per-start key
    assert not a.valid(cookie, now=1000.0 + 13 * 3600)  # expired
    expires, mac = cookie.split(".")
    assert not a.valid(f"{int(expires) + 10**6}.{mac}", now=1001.0)  # a longer life cannot be written in
    access = Access(None, a)
    assert access.may_audit(_Req(cookies={SIGNIN_COOKIE: a.cookie()}))
    assert not access.may_audit(_Req(cookies={SIGNIN_COOKIE: b.cookie()})) and not access.may_audit(_Req())


def _app(access, store=None):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ui.http import SessionOwners, export_route, signin_routes

    async def ok(request):
        return PlainTextResponse("stream of " + (request.query_params.get("session_hash") or "?"))

    async def named(request):
        return PlainTextResponse("stream of " + request.path_params["event"])

    routes = [Route("/gradio_api/queue/join", ok, methods=["POST"]), Route("/gradio_api/queue/data", ok),
              Route("/gradio_api/call/{api}/{event}", named), Route("/gradio_api/cancel", ok, methods=["POST"]),
              export_route(access, store)]
    if access.one_time:
        routes += signin_routes(access.one_time)
    return Starlette(routes=routes, middleware=[Middleware(SessionOwners)])


def test_sign_in_page_sets_the_cookie_only_for_the_right_password(tmp_path):
    from starlette.testclient import TestClient

    from bot.store import AuditStore

    store = AuditStore(str(tmp_path / "a.sqlite"), lambda t: t)
    store.log(session="s", text="hello <PERSON>", reply="hi", intent="greet", confidence=0.9, fallback=False,
              fallback_reason=None, attributions=[], model_version="v")
    one = OneTimeSignIn()
    client = TestClient(_app(Access(None, one), store), base_url="http://127.0.0.1")
    assert client.get("/audit/export?fmt=csv").status_code == 403
    assert client.post("/signin", data={"password": "guess"}, follow_redirects=False).status_code == 403
    assert SIGNIN_COOKIE not in client.cookies
    assert client.get("/signin?token=wrong", follow_redirects=False).status_code == 403
    r = client.post("/signin", data={"password": one.password}, follow_redirects=False)
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    exported = client.get("/audit/export?fmt=csv")
    assert exported.status_code == 200 and "hello <PERSON>" in exported.text
    assert exported.headers["content-disposition"].startswith("attachment;")
    for bad in ("since=yesterday", "min=nan", "min=0.9&max=0.1", "fallback=maybe", "fmt=xml",
                "since=0001-01-01T00:00:00%2B05:00"):
        r = client.get(f"/audit/export?{bad}")
        assert r.status_code == 400 and "Traceback" not in r.text, bad
    again = TestClient(_app(Access(None, one), store), base_url="http://127.0.0.1")
    spent = again.get(f"/signin?token={one.password}", follow_redirects=False)  # one sign-in per password
    assert spent.status_code == 403 and "used or has expired" in spent.text
    link = OneTimeSignIn()
    fresh = TestClient(_app(Access(None, link), store), base_url="http://127.0.0.1")
    assert fresh.get(f"/signin?token={link.password}", follow_redirects=False).status_code == 303  # the link works
    late = OneTimeSignIn(minutes=60, now=0)  # started long ago: expired
    assert not late.check(late.password) and late.spent


def test_a_session_stays_with_the_client_that_opened_it():
    from starlette.testclient import TestClient

    app = _app(Access(None, OneTimeSignIn()))
    alice, mallory = TestClient(app), TestClient(app)
    alice.get("/gradio_api/queue/data?session_hash=warmup")  # the first response sets the client cookie
    mallory.get("/gradio_api/queue/data?session_hash=warmup")
    assert alice.post("/gradio_api/queue/join", json={"session_hash": "abc123", "fn_index": 0}).status_code == 200
    assert alice.get("/gradio_api/queue/data?session_hash=abc123").text == "stream of abc123"
    denied = mallory.get("/gradio_api/queue/data?session_hash=abc123")
    assert denied.status_code == 403 and "another user" in denied.text
    assert mallory.post("/gradio_api/queue/join", json={"session_hash": "abc123", "fn_index": 0}).status_code == 403
    assert mallory.post("/gradio_api/queue/join", json={"session_hash": "m1", "fn_index": 0}).status_code == 200


def test_the_session_guard_cannot_be_tricked():
    from starlette.testclient import TestClient

    app = _app(Access(None, OneTimeSignIn()))
    alice, mallory = TestClient(app), TestClient(app)
    for c in (alice, mallory):
        c.get("/gradio_api/queue/data?session_hash=warmup")
    assert alice.post("/gradio_api/queue/join", json={"session_hash": "s1"}).status_code == 200
    r = mallory.get("/gradio_api/queue/data?session_hash=mine&session_hash=s1")  # Starlette would read the last
    assert r.status_code == 400
    assert mallory.post("/gradio_api/queue/join", json={"session_hash": ["s1"]}).status_code == 400
    cross = alice.get("/gradio_api/queue/data?session_hash=s1", headers={"origin": "https://evil.example"})
    assert cross.status_code == 403 and "Cross-site" in cross.text
    assert alice.get("/gradio_api/queue/data?session_hash=s1", headers={"sec-fetch-site": "cross-site"}).status_code == 403
    same = alice.get("/gradio_api/queue/data?session_hash=s1", headers={"origin": "http://testserver"})
    assert same.status_code == 200


def test_the_session_guard_checks_every_route_and_every_body():
    """The review's findings (issue 30): `GET /gradio_api/call/<api>/<hash>` read another user's event stream; a
    JSON body sent as `APPLICATION/JSON` skipped the ownership check and the 2 MB cap (queue join and cancel); a body
    of nested brackets raised RecursionError (a 500 with a traceback)."""
    from starlette.testclient import TestClient

    from ui.http import MAX_BODY

    app = _app(Access(None, OneTimeSignIn()))
    alice, mallory = TestClient(app), TestClient(app)
    for c in (alice, mallory):
        c.get("/gradio_api/queue/data?session_hash=warmup")
    assert alice.post("/gradio_api/queue/join", json={"session_hash": "s1"}).status_code == 200
    assert alice.get("/gradio_api/call/chat/s1").text == "stream of s1"
    stolen = mallory.get("/gradio_api/call/anything/s1")
    assert stolen.status_code == 403 and "another user" in stolen.text
    assert mallory.get("/gradio_api/queue/data?session_hash=mine&event_id=s1").status_code == 403
    for header in ("APPLICATION/JSON", "text/plain", ""):
        body = json.dumps({"session_hash": "s1", "fn_index": 0}).encode()
        for route in ("/gradio_api/queue/join", "/gradio_api/cancel"):
            r = mallory.post(route, content=body, headers={"content-type": header})
            assert r.status_code == 403, (route, header)
        big = mallory.post("/gradio_api/cancel", content=b"[" + b" " * (MAX_BODY + 1) + b"]",
                           headers={"content-type": header})
        assert big.status_code == 413, header
    deep = mallory.post("/gradio_api/cancel", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert deep.status_code == 400 and "Traceback" not in deep.text
    assert mallory.post("/gradio_api/cancel", json={"event_id": "s1", "session_hash": "m2"}).status_code == 403
    assert mallory.post("/gradio_api/queue/join", json={"session_hash": "m2"}).status_code == 200  # its own: fine


def test_the_audit_tabs_date_filter_names_the_format_for_any_bad_date():
    import gradio as gr

    from ui.web import audit_filter

    for bad in ("yesterday", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        with pytest.raises(gr.Error, match="is not a date"):
            audit_filter(None, 0, 1, "any", bad, "")
    assert audit_filter(None, 0, 1, "any", "2026-12-07", "2026-12-07").until.hour == 23


def test_a_refused_join_binds_nothing():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ui.http import SessionOwners

    async def refuse(request):
        return PlainTextResponse("Not authenticated", status_code=401)

    async def data(request):
        return PlainTextResponse("stream")

    app = Starlette(routes=[Route("/gradio_api/queue/join", refuse, methods=["POST"]),
                            Route("/gradio_api/queue/data", data)], middleware=[Middleware(SessionOwners)])
    squatter, victim = TestClient(app), TestClient(app)
    for c in (squatter, victim):
        c.get("/gradio_api/queue/data?session_hash=warmup")
    assert squatter.post("/gradio_api/queue/join", json={"session_hash": "future"}).status_code == 401
    assert victim.get("/gradio_api/queue/data?session_hash=future").status_code == 200  # not claimed


def _front(app_routes, api=None, sign_in=None):
    """`Front` (ui/http.py) around a small Starlette app standing in for Gradio's."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse

    from ui.auth import RateLimit
    from ui.http import Front

    async def api_app(scope, receive, send):
        await JSONResponse({"api": True})(scope, receive, send)

    return Front(Starlette(routes=app_routes), api=api or api_app, hosts={"testserver", "127.0.0.1"},
                 sign_in=sign_in or RateLimit(5 / 60, 5))


def test_the_reviews_second_round_findings_hold():
    """An independent review of this issue's surface: an API body was read whole before its token was checked (any
    size); a burst of sign-ins all passed the limiter; Gradio's debug page showed tracebacks; /gradio_api/file= was
    an open redirect; a body starting with a BOM skipped the session check."""
    from starlette.responses import PlainTextResponse, RedirectResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ui.auth import RateLimit
    from ui.http import MAX_BODY

    async def login(request):
        form = await request.form()
        return PlainTextResponse("ok" if form.get("password") == "right" else "no",
                                 status_code=200 if form.get("password") == "right" else 401)

    async def boom(request):
        raise KeyError("fns[99999]")

    async def file(request):
        return RedirectResponse("https://evil.example/")

    client = TestClient(_front([Route("/login", login, methods=["POST"]), Route("/config", boom),
                                Route("/gradio_api/file={rest:path}", file)]), raise_server_exceptions=False)
    assert client.post("/v1/chat", content=b"x" * (MAX_BODY + 1)).status_code == 413  # before any token check
    assert client.post("/v1/chat", content=b"{}").json() == {"api": True}
    assert [client.post("/login", data={"password": "right"}).status_code for _ in range(8)] == [200] * 8  # refunded
    codes = [client.post("/login", data={"password": f"guess-{i}"}).status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    r = client.get("/config")
    assert r.status_code == 500 and "Traceback" not in r.text and "KeyError" not in r.text
    assert client.get("/gradio_api/file=https://evil.example/", follow_redirects=False).status_code == 404
    limiter = RateLimit(1.0, 2, max_keys=100)
    for i in range(1000):  # many addresses: memory stays bounded
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter.buckets) <= 101

    app = _app(Access(None, OneTimeSignIn()))
    alice, mallory = TestClient(app), TestClient(app)
    for c in (alice, mallory):
        c.get("/gradio_api/queue/data?session_hash=warmup")
    assert alice.post("/gradio_api/queue/join", json={"session_hash": "victim"}).status_code == 200
    for encoded in (b"\xef\xbb\xbf" + json.dumps({"session_hash": "victim"}).encode(),
                    json.dumps({"session_hash": "victim"}).encode("utf-16")):
        r = mallory.post("/gradio_api/cancel", content=encoded, headers={"content-type": "application/json"})
        assert r.status_code == 403, encoded[:8]
