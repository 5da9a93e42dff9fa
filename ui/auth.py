"""Who may open the app, and who may read the audit log.

- Bound to this machine without `--auth-file`: anyone here may chat; the Audit tab needs the one-time
  password printed when the server starts (a new one each start, like Jupyter's token), entered at
  `/signin` or carried by the printed sign-in link.
- With `--auth-file` (required anywhere else): everyone signs in (Gradio's login), and only users with
  the `auditor` role (`user:password:auditor`) see the Audit tab and may call its handlers or exports.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
ROLES = ("user", "auditor")
AUDITOR = "auditor"
SIGNIN_COOKIE = "candor-audit"
SIGNIN_HOURS = 12


class AuthError(ValueError):
    pass


@dataclass(frozen=True)
class Account:
    password: str
    role: str = "user"


def check_binding(host: str, users: dict | None) -> None:
    """Refuse to serve beyond this machine without sign-in."""
    if host not in LOCAL_HOSTS and not users:
        raise AuthError(f"refusing to bind to {host} without authentication: anyone who can reach it could read "
                        "the chat and audit log. Pass --auth-file FILE (lines of user:password[:auditor]), or bind "
                        "to 127.0.0.1.")


def read_users(path: str | Path) -> dict[str, Account]:
    """`user:password` or `user:password:ROLE` (ROLE: user, auditor) per line; blank lines and `#`
    comments skipped. A password may contain ':'. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AuthError(f"{path}: auth file not found")
    users: dict[str, Account] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        role = "user"
        head, _, last = password.rpartition(":")
        if head and last in ROLES:
            password, role = head, last
        elif head and last.lower() in ROLES:
            raise AuthError(f"{path}:{n}: role '{last}' — roles are lower case: {', '.join(ROLES)}")
        if not sep or not user.strip() or not password:
            raise AuthError(f"{path}:{n}: expected user:password or user:password:auditor")
        if len(password) < 8:
            raise AuthError(f"{path}:{n}: the password of '{user.strip()}' is shorter than 8 characters")
        if user.strip() in users:
            raise AuthError(f"{path}:{n}: '{user.strip()}' is listed twice")
        users[user.strip()] = Account(password, role)
    if not users:
        raise AuthError(f"{path}: no users in the auth file")
    return users


def checker(users: dict[str, Account]):
    """Gradio's `auth=` callable; constant-time comparison."""
    def ok(user: str, password: str) -> bool:
        account = users.get(user)
        expected = account.password if account else secrets.token_urlsafe(16)  # same work for unknown users
        return hmac.compare_digest(expected.encode(), (password or "").encode()) and account is not None
    return ok


class OneTimeSignIn:
    """A password made at start and never stored; signing in with it sets a cookie signed with a
    per-process key (HttpOnly, SameSite=Strict), valid for SIGNIN_HOURS or until the server stops."""

    def __init__(self):
        self.password = secrets.token_urlsafe(18)
        self._key = secrets.token_bytes(32)

    def check(self, password: str | None) -> bool:
        return hmac.compare_digest(self.password.encode(), (password or "").encode("utf-8", "replace"))

    def cookie(self, now: float | None = None) -> str:
        expires = str(int((now or time.time()) + SIGNIN_HOURS * 3600))
        return f"{expires}.{self._sign(expires)}"

    def valid(self, cookie: str | None, now: float | None = None) -> bool:
        expires, _, mac = (cookie or "").partition(".")
        return (expires.isascii() and expires.isdigit()
                and hmac.compare_digest(self._sign(expires).encode(), mac.encode("utf-8", "replace"))
                and int(expires) > (now or time.time()))

    def _sign(self, expires: str) -> str:
        return hmac.new(self._key, f"{AUDITOR}|{expires}".encode(), hashlib.sha256).hexdigest()


def cookies(request) -> dict:
    """The cookies of a Starlette request or of a `gr.Request` (whose dicts come back as objects)."""
    found = getattr(request, "cookies", None)
    return dict(found) if found else {}


def gradio_user(request) -> str | None:
    """The signed-in Gradio user of a `gr.Request`, or of a plain Starlette request to a route of the
    Gradio app (read from Gradio's own session cookie)."""
    user = getattr(request, "username", None)
    if user:
        return user
    app = getattr(request, "app", None) or (getattr(request, "scope", None) or {}).get("app")
    jar = cookies(request)
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    if tokens is None or cookie_id is None:
        return None
    token = jar.get(f"access-token-{cookie_id}") or jar.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token)


class Access:
    """One place that says what a request may do."""

    def __init__(self, users: dict[str, Account] | None = None, one_time: OneTimeSignIn | None = None):
        self.users, self.one_time = users, one_time

    @property
    def sign_in(self) -> bool:
        """Everyone signs in (an auth file)."""
        return bool(self.users)

    def role(self, request) -> str | None:
        if self.users:
            account = self.users.get(gradio_user(request) or "")
            return account.role if account else None
        if self.one_time and self.one_time.valid(cookies(request).get(SIGNIN_COOKIE)):
            return AUDITOR
        return None

    def may_audit(self, request) -> bool:
        return self.role(request) == AUDITOR

    def auditors(self) -> list[str]:
        return [u for u, a in (self.users or {}).items() if a.role == AUDITOR]
