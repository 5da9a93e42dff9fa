"""The HTTP surface of `candor serve`, closed by default: what answers, and for whom.

`Front` is the outermost middleware. It refuses a Host header that is not this server's (DNS rebinding), hands the
REST API's and the load balancer's paths to the API app (ui/api.py), lets through only the routes of Gradio's app
that the web app uses (`ROUTES`: everything else is 404), adds a Content-Security-Policy and the usual security
headers to every answer, and strips Gradio's third-party script and font links from the page.

`SessionOwners`, inside it, keeps each chat session with the client that opened it: a conversation belongs to a
server-issued, signed identity (the signed-in user, or the `candor-client` cookie this server signed), never to the
session hash the client chose. Gradio streams a session's events to whoever names its hash; so any request that names
a bound session — a path segment, a query value, a top-level value of a body that parses as JSON, whatever the route
and whatever its Content-Type says — from anyone else is refused (403), and a queue join without an identity is
refused too.

Also here: the one-time sign-in page and a sign-out (every sign-in, this and Gradio's, is rate-limited by `Front`) and the
streamed audit export.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections import OrderedDict
from datetime import datetime, timezone
from urllib.parse import urlparse

from starlette.requests import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route

from ui.api import is_api
from ui.auth import CLIENT_COOKIE, CLIENT_IDS, LOCAL_HOSTS, SIGNIN_COOKIE, SIGNIN_HOURS, Access, OneTimeSignIn, \
    RateLimit, identity

MAX_SESSIONS = 10_000
MAX_BODY = 2 * 1024 * 1024
logger = logging.getLogger(__name__)

_FORM = """<!doctype html><meta charset="utf-8"><title>Candor · sign in to audit</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28em;margin:4em auto}}input{{font-size:1em;padding:.4em;width:100%}}
button{{font-size:1em;padding:.4em 1em;margin-top:.6em}}.err{{color:#b00}}</style>
<h1>Sign in to the audit log</h1><p>Enter the one-time password that <code>candor serve</code> printed in its
terminal (a new one each start).</p>{error}
<form method="post" action="signin"><input type="password" name="password" id="password" autofocus
autocomplete="off" aria-label="one-time password"><button type="submit" id="signin">Sign in</button></form>"""


SIGNIN_RATE = RateLimit(rate=5 / 60, burst=5)  # failed sign-ins per client address: 5 a minute (`Front` keeps it)


def signin_routes(one_time: OneTimeSignIn | None) -> list[Route]:
    """`/signin` (the one-time password; without an auth file) and `/signout` (both kinds of sign-in)."""
    def done() -> RedirectResponse:
        r = RedirectResponse("./?view=audit", status_code=303)
        r.set_cookie(SIGNIN_COOKIE, one_time.cookie(), max_age=SIGNIN_HOURS * 3600, httponly=True, samesite="strict")
        return r

    def wrong(text: str) -> HTMLResponse:
        if one_time.spent:
            text = ("That password has been used or has expired (it is good for one sign-in within "
                    "an hour of the start). Restart candor serve for a new one, or give auditors accounts with "
                    "--auth-file.")
        return HTMLResponse(_FORM.format(error=f'<p class="err" id="signin-error">{text}</p>'), status_code=403)

    async def page(request: Request):
        token = request.query_params.get("token")
        if token is not None:
            return done() if one_time.check(token) else wrong(
                "That link is not valid (a new password is made at every start).")
        return HTMLResponse(_FORM.format(error=""))

    async def submit(request: Request):
        form = await request.form()
        return done() if one_time.check(str(form.get("password") or "")) else wrong("Wrong password.")

    async def signout(request: Request):
        r = RedirectResponse("logout" if one_time is None else "./", status_code=303)  # Gradio's own sign-out
        r.delete_cookie(SIGNIN_COOKIE, httponly=True, samesite="strict")
        return r

    out = [Route("/signout", signout, methods=["GET", "POST"])]
    if one_time is not None:
        out += [Route("/signin", page, methods=["GET"]), Route("/signin", submit, methods=["POST"])]
    return out


def export_route(access: Access, store) -> Route:
    """`/audit/export?fmt=csv|json&…filters`: streamed to the auditor, never written to disk."""
    from bot.store import Filter, to_csv, to_json

    async def export(request: Request):
        if not access.may_audit(request):
            return PlainTextResponse("Only auditors may export the audit log.", status_code=403)
        q = request.query_params
        fmt = q.get("fmt", "csv")
        if fmt not in ("csv", "json"):
            return PlainTextResponse("fmt must be csv or json", status_code=400)
        try:
            f = Filter.parse(q.get("intent"), q.get("min", 0), q.get("max", 1), q.get("fallback", "any"),
                             q.get("since", ""), q.get("until", ""))
        except ValueError as e:
            return PlainTextResponse(str(e), status_code=400)
        f.limit = None  # every matching turn, not the tab's first 500
        rows = await run_in_threadpool(store.query, f)
        body = await run_in_threadpool(to_csv if fmt == "csv" else to_json, rows)
        name = f"candor-audit-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.{fmt}"
        return StreamingResponse(iter([body.encode("utf-8")]),
                                 media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/json",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"',
                                          "Cache-Control": "no-store"})

    return Route("/audit/export", export, methods=["GET"])


# The routes of Gradio's app that the web app uses (method, path pattern); everything else answers 404. Gradio's
# uploads, deep links, monitoring dashboard, curl API (/call), streaming, proxy, vibe editor, … are not among them.
ROUTES = [(("GET", "HEAD"), p) for p in (
    r"/", r"/config/?", r"/gradio_api/info/?", r"/assets/.+", r"/static/.+", r"/svelte/.+", r"/favicon\.ico",
    r"/(gradio_api/)?theme\.css", r"/manifest\.json", r"/robots\.txt", r"/gradio_api/startup-events",
    r"/gradio_api/heartbeat/[^/]+", r"/gradio_api/queue/data", r"/gradio_api/file=/(?!.*://).+", r"/logout",
    r"/gradio_api/login_check/?", r"/signin", r"/signout", r"/audit/export")] + [(("POST",), p) for p in (
    r"/gradio_api/queue/join", r"/gradio_api/cancel", r"/gradio_api/run/predict/?", r"/login/?", r"/signin",
    r"/signout")]
_ROUTES = [(methods, re.compile(p)) for methods, p in ROUTES]
SIGN_IN_POSTS = ("/login", "/login/", "/signin")  # Gradio's sign-in (an auth file) and the one-time password's
THIRD_PARTY = re.compile(rb'<(?:script|link)\b[^>]*\b(?:src|href)="https?://[^"]*"[^>]*>(?:\s*</script>)?', re.I)
INLINE_SCRIPT = re.compile(rb"<script\b(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'{hashes}; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
# 'unsafe-eval': Gradio runs an event's `js=` (the audit export buttons) with `new Function`. Inline scripts: only the
# page's own, by hash.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-opener-policy", b"same-origin")]


def allowed(method: str, path: str) -> bool:
    return any(method in methods and pattern.fullmatch(path) for methods, pattern in _ROUTES)


class Front:
    """The outermost middleware (see the module's doc): Host check, the API's paths, the allow-list, headers."""

    def __init__(self, app, api, hosts: set[str] | None = None, sign_in: RateLimit = SIGNIN_RATE):
        self.app, self.api, self.sign_in = app, api, sign_in
        self.hosts = {h.lower() for h in (hosts or LOCAL_HOSTS)}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request = Request(scope)
        send = _with_headers(send, SECURITY_HEADERS)
        if _hostname(request.headers.get("host", "")) not in self.hosts:
            return await _refuse(421, "Unknown Host: this server answers only to its own names (--allowed-host).",
                                 scope, receive, send)
        path, method = scope["path"], scope.get("method", "GET")
        if scope["type"] == "http" and method not in ("GET", "HEAD", "OPTIONS"):  # every body capped, before anything
            body, receive = await _read_body(receive)  # reads it (FastAPI would read an API body before its token)
            if body is None:
                return await _refuse(413, "Request too large.", scope, receive, send)
        if is_api(path):
            return await self.api(scope, receive, send)
        if scope["type"] != "http" or not allowed(method, path):
            return await _refuse(404, "Not found.", scope, receive, send)
        if (method == "POST" and path in SIGN_IN_POSTS) or (path == "/signin" and "token" in request.query_params):
            address = _address(request)
            wait = self.sign_in.take(address)  # taken before the attempt (a burst cannot all pass), refunded on success
            if wait:
                return await PlainTextResponse(f"Too many sign-in attempts: try again in {int(wait) + 1} s.", 429,
                                               headers={"Retry-After": str(int(wait) + 1)})(scope, receive, send)
            send = _on_success(send, lambda: self.sign_in.refund(address))
        if path.startswith("/gradio_api/file="):  # Gradio copies request headers into a ranged answer: no Range here
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]}
        if method in ("GET", "HEAD") and path == "/":
            send = _page(send)
        else:
            send = _with_headers(send, [(b"content-security-policy", CSP.format(hashes="").encode())])
        started = []

        async def tracked(message):
            if message["type"] == "http.response.start":
                started.append(True)
            await send(message)
        try:
            return await self.app(scope, receive, tracked)
        except Exception:  # noqa: BLE001 - Gradio's app runs in debug mode: never a traceback to the client
            logger.exception("%s %s failed", method, path)
            if not started:
                return await PlainTextResponse("The server failed to answer this request.", 500)(scope, receive, send)
            raise


def _address(request: Request) -> str:
    return request.client.host if request.client else "-"


def _on_success(send, succeeded):
    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] < 400:
            succeeded()
        await send(message)
    return wrapped


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:7860
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _with_headers(send, headers: list[tuple[bytes, bytes]]):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            have = {k.lower() for k, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []), *[(k, v) for k, v in headers if k not in have]]}
        await send(message)
    return wrapped


def _page(send):
    """The app's page without third-party scripts and links (Gradio's iframe resizer from a CDN, Google Fonts), with a
    Content-Security-Policy that admits its own inline scripts by hash."""
    start: dict = {}
    chunks: list[bytes] = []

    async def wrapped(message):
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length",)]
        if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers):
            body = THIRD_PARTY.sub(b"", body)
            hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
                             for m in INLINE_SCRIPT.findall(body))
            headers.append((b"content-security-policy", CSP.format(hashes=hashes).encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    return wrapped


class SessionOwners:
    """ASGI middleware in front of Gradio: refuses cross-site requests, a queue join without a server-issued identity,
    and any request that names a session hash (query, path or JSON body) bound to another identity. A hash is bound
    to its identity when Gradio accepts the identity's first queue join with it. A client without a valid identity
    cookie is given one (`ui.auth.ClientIds`)."""

    def __init__(self, app, max_sessions: int = MAX_SESSIONS, per_client: int = 100):
        self.app = app
        self.owners: OrderedDict[str, str] = OrderedDict()
        self.max_sessions, self.per_client = max_sessions, per_client

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        path = scope["path"]
        if _cross_site(request):
            return await _refuse(403, "Cross-site requests are refused.", scope, receive, send)
        owner = identity(request)
        if CLIENT_IDS.verify(request.cookies.get(CLIENT_COOKIE)) is None:
            send = _with_headers(send, [(b"set-cookie", f"{CLIENT_COOKIE}={CLIENT_IDS.issue()}; Path=/; HttpOnly; "
                                                        "SameSite=Strict".encode())])
        sessions = request.query_params.getlist("session_hash")
        if len(sessions) > 1:
            return await _refuse(400, "One session_hash at most.", scope, receive, send)
        # Any bound session named anywhere — a path segment (Gradio's /heartbeat/<hash>, …) or any query value — is
        # checked, whatever the route: a list of the routes that name one would miss some.
        sessions += [seg for seg in path.split("/") if seg in self.owners]
        sessions += [v for k, v in request.query_params.multi_items() if k != "session_hash" and v in self.owners]
        found = None
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):  # every body, whatever its Content-Type says
            body, receive = await _read_body(receive)
            if body is None:
                return await _refuse(413, "Request too large.", scope, receive, send)
            try:  # as FastAPI would read it: json.loads also takes a BOM and UTF-16/32 bodies
                data = json.loads(body) if body.strip() else None
            except RecursionError:
                return await _refuse(400, "Malformed JSON: nested too deeply.", scope, receive, send)
            except ValueError:
                data = None
            found = data.get("session_hash") if isinstance(data, dict) else None
            if found is not None and not isinstance(found, str):
                return await _refuse(400, "session_hash must be text.", scope, receive, send)
            if found:
                sessions.append(found)
            if isinstance(data, dict):
                sessions += [v for k, v in data.items() if k != "session_hash" and isinstance(v, str) and v in self.owners]
        for session in sessions:
            bound = self.owners.get(session)
            if bound is not None and bound != owner:
                return await _refuse(403, "This chat session belongs to another user.", scope, receive, send)
            if bound is not None:
                self.owners.move_to_end(session)
        if path.endswith("/queue/join"):
            if owner is None:
                return await _refuse(403, "No identity: load the app's page (or /config) first; it sets the cookie "
                                          "that owns your conversation.", scope, receive, send)
            if found and found not in self.owners:
                send = self._bind_on_success(send, found, owner)
        return await self.app(scope, receive, send)

    def _bind_on_success(self, send, session: str, owner: str):
        async def wrapped(message):
            if message["type"] == "http.response.start" and message["status"] == 200:
                mine = [s for s, o in self.owners.items() if o == owner]
                for old in mine[: max(0, len(mine) - self.per_client + 1)]:  # a client's oldest sessions go first
                    self.owners.pop(old, None)
                self.owners[session] = owner
                while len(self.owners) > self.max_sessions:
                    self.owners.popitem(last=False)
            await send(message)
        return wrapped


def _cross_site(request: Request) -> bool:
    """A browser request made by another site (its Origin is not this host, or Sec-Fetch-Site says so).
    Gradio answers any origin with credentials allowed when it is not on localhost; this comes first."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if not origin or origin == "null" and request.method == "GET":
        return False
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")} - {""}
    return urlparse(origin).netloc not in hosts


async def _refuse(status: int, text: str, scope, receive, send):
    return await PlainTextResponse(text, status_code=status)(scope, receive, send)


async def _read_body(receive, limit: int = MAX_BODY):
    """The whole request body (None if over `limit`), and a `receive` that replays it."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None, receive
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return body, replay


def locked_message(access: Access) -> str:
    if access.users:
        return ("Only auditors may read the audit log. Ask an administrator to give your account the `auditor` "
                "role in the auth file (`user:password:auditor`).")
    return ("The audit log needs the one-time password that `candor serve` printed in its terminal: open the "
            "sign-in link printed there, or [sign in here](signin). "
            "A new password is made at every start.")
