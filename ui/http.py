"""What the web app adds to Gradio's HTTP server: the one-time sign-in page, streamed audit exports,
and a guard that keeps each chat session with the client that opened it.

Gradio streams a session's events to whoever asks `/queue/data?session_hash=…` (it checks sign-in,
not ownership). `SessionOwners` binds a session hash to the client that first joined the queue with it
— the signed-in user, or a random per-browser cookie — and refuses anyone else (403) on any request that names a
bound session: as a path segment, a query value or a top-level value of a body that parses as JSON, whatever the
route and whatever its Content-Type says. A client with neither (an API client on loopback without sign-in)
binds nothing.
"""
from __future__ import annotations

import json
import math
import secrets
from collections import OrderedDict
from datetime import datetime, timezone
from urllib.parse import urlparse

from starlette.requests import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route

from ui.auth import SIGNIN_COOKIE, SIGNIN_HOURS, Access, OneTimeSignIn, gradio_user

CLIENT_COOKIE = "candor-client"
MAX_SESSIONS = 10_000
MAX_BODY = 2 * 1024 * 1024

_FORM = """<!doctype html><meta charset="utf-8"><title>Candor · sign in to audit</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28em;margin:4em auto}}input{{font-size:1em;padding:.4em;width:100%}}
button{{font-size:1em;padding:.4em 1em;margin-top:.6em}}.err{{color:#b00}}</style>
<h1>Sign in to the audit log</h1><p>Enter the one-time password that <code>candor serve</code> printed in its
terminal (a new one each start).</p>{error}
<form method="post" action="signin"><input type="password" name="password" id="password" autofocus
autocomplete="off" aria-label="one-time password"><button type="submit" id="signin">Sign in</button></form>"""


def signin_routes(one_time: OneTimeSignIn) -> list[Route]:
    def done() -> RedirectResponse:
        r = RedirectResponse("./?view=audit", status_code=303)
        r.set_cookie(SIGNIN_COOKIE, one_time.cookie(), max_age=SIGNIN_HOURS * 3600, httponly=True, samesite="strict")
        return r

    async def page(request: Request):
        token = request.query_params.get("token")
        if token is not None:
            return done() if one_time.check(token) else HTMLResponse(
                _FORM.format(error='<p class="err">That link is not valid (a new password is made at every start).</p>'),
                status_code=403)
        return HTMLResponse(_FORM.format(error=""))

    async def submit(request: Request):
        form = await request.form()
        if one_time.check(str(form.get("password") or "")):
            return done()
        return HTMLResponse(_FORM.format(error='<p class="err" id="signin-error">Wrong password.</p>'), status_code=403)

    return [Route("/signin", page, methods=["GET"]), Route("/signin", submit, methods=["POST"])]


def export_route(access: Access, store, parse_filter) -> Route:
    """`/audit/export?fmt=csv|json&…filters`: streamed to the auditor, never written to disk."""
    from bot.store import to_csv, to_json

    async def export(request: Request):
        if not access.may_audit(request):
            return PlainTextResponse("Only auditors may export the audit log.", status_code=403)
        q = request.query_params
        fmt = q.get("fmt", "csv")
        if fmt not in ("csv", "json"):
            return PlainTextResponse("fmt must be csv or json", status_code=400)
        try:
            lo, hi = float(q.get("min", 0)), float(q.get("max", 1))
        except ValueError:
            return PlainTextResponse("min and max must be numbers between 0 and 1", status_code=400)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi <= 1):
            return PlainTextResponse("min and max must be numbers between 0 and 1, min ≤ max", status_code=400)
        if q.get("fallback", "any") not in ("any", "yes", "no"):
            return PlainTextResponse("fallback must be any, yes or no", status_code=400)
        try:
            f = parse_filter(q.get("intent"), lo, hi, q.get("fallback", "any"), q.get("since", ""), q.get("until", ""))
        except Exception:  # noqa: BLE001 - a bad date: the message names the format, not the exception
            return PlainTextResponse("since and until must be dates: YYYY-MM-DD or YYYY-MM-DD HH:MM", status_code=400)
        f.limit = None  # every matching turn, not the tab's first 500
        rows = await run_in_threadpool(store.query, f)
        body = await run_in_threadpool(to_csv if fmt == "csv" else to_json, rows)
        name = f"candor-audit-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.{fmt}"
        return StreamingResponse(iter([body.encode("utf-8")]),
                                 media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/json",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"',
                                          "Cache-Control": "no-store"})

    return Route("/audit/export", export, methods=["GET"])


class SessionOwners:
    """ASGI middleware in front of Gradio: refuses cross-site requests, Gradio's deep links, and any
    request that names a session hash (query, path or JSON body) bound to another client. A hash is
    bound to its client when Gradio accepts the client's first queue join with it."""

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
        if _closed(path):
            return await _refuse(404, "Not found.", scope, receive, send)
        client = request.cookies.get(CLIENT_COOKIE)
        if not client:
            send = _with_cookie(send, f"{CLIENT_COOKIE}={secrets.token_urlsafe(16)}; Path=/; HttpOnly; "
                                      "SameSite=Strict")
        identity = self._identity(request, client)
        sessions = request.query_params.getlist("session_hash")
        if len(sessions) > 1:
            return await _refuse(400, "One session_hash at most.", scope, receive, send)
        # Any bound session named anywhere — a path segment (Gradio's /heartbeat/<hash>, /call/<api>/<hash>, …) or
        # any query value — is checked, whatever the route: a list of the routes that name one would miss some.
        sessions += [seg for seg in path.split("/") if seg in self.owners]
        sessions += [v for k, v in request.query_params.multi_items() if k != "session_hash" and v in self.owners]
        found = None
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):  # every body, whatever its Content-Type says
            body, receive = await _read_body(receive)
            if body is None:
                return await _refuse(413, "Request too large.", scope, receive, send)
            try:
                data = json.loads(body) if body.lstrip()[:1] in (b"{", b"[") else None
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
            owner = self.owners.get(session)
            if owner is not None and owner != identity:
                return await _refuse(403, "This chat session belongs to another user.", scope, receive, send)
            if owner is not None:
                self.owners.move_to_end(session)
        joining = found if scope["method"] == "POST" else None  # the session a queue join names in its body
        if path.endswith("/queue/join") and identity and joining and joining not in self.owners:
            send = self._bind_on_success(send, joining, identity)
        return await self.app(scope, receive, send)

    def _bind_on_success(self, send, session: str, identity: str):
        async def wrapped(message):
            if message["type"] == "http.response.start" and message["status"] == 200:
                mine = [s for s, o in self.owners.items() if o == identity]
                for old in mine[: max(0, len(mine) - self.per_client + 1)]:  # a client's oldest sessions go first
                    self.owners.pop(old, None)
                self.owners[session] = identity
                while len(self.owners) > self.max_sessions:
                    self.owners.popitem(last=False)
            await send(message)
        return wrapped

    @staticmethod
    def _identity(request: Request, client: str | None) -> str | None:
        user = gradio_user(request)
        return f"user:{user}" if user else (f"client:{client}" if client else None)


def _closed(path: str) -> bool:
    """Gradio routes the app does not use: deep links (they would snapshot a session's inputs to disk for anyone),
    file uploads (anyone's files kept in /tmp/gradio; the app has no file input) and the monitoring dashboard (its key
    printed to the server log, its summary a 500)."""
    parts = path.rstrip("/").split("/")
    return parts[-1] in ("deep_link", "upload", "upload_progress") or "monitoring" in parts


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


def _with_cookie(send, cookie: str):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
        await send(message)
    return wrapped


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
