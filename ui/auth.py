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
import threading
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


WILDCARDS = {"0.0.0.0", "::", ""}


def allowed_hosts(host: str, names: list[str]) -> set[str]:
    """The Host header names this server answers to: loopback names, the address it binds, and `names`. Bound to every
    address (0.0.0.0), it needs the names clients use: a Host check is what stops DNS rebinding."""
    if host in WILDCARDS and not names:
        raise AuthError(f"bound to {host or 'every address'}, the server needs the names clients reach it by: pass "
                        "--allowed-host NAME (its DNS name, or the load balancer's; repeatable)")
    return {h.lower().strip("[]") for h in (*LOCAL_HOSTS, *names, *([] if host in WILDCARDS else [host]))}


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


ONE_TIME_MINUTES = 60


def _now(now: float | None) -> float:
    return time.time() if now is None else now


class OneTimeSignIn:
    """A password made at start and never stored, good for one sign-in within `minutes` of the start; signing in with
    it sets a cookie signed with a per-process key (HttpOnly, SameSite=Strict), valid for SIGNIN_HOURS or until the
    server stops. After that, a restart makes a new password (or an auth file gives lasting accounts)."""

    def __init__(self, minutes: float = ONE_TIME_MINUTES, now: float | None = None):
        self.password = secrets.token_urlsafe(18)
        self._key = secrets.token_bytes(32)
        self.expires = _now(now) + minutes * 60
        self.used = False
        self._lock = threading.Lock()

    def check(self, password: str | None, now: float | None = None) -> bool:
        """True once: for the right password, unused and not expired."""
        right = hmac.compare_digest(self.password.encode(), (password or "").encode("utf-8", "replace"))
        with self._lock:
            if not right or self.used or _now(now) > self.expires:
                return False
            self.used = True
            return True

    @property
    def spent(self) -> bool:
        return self.used or time.time() > self.expires

    def cookie(self, now: float | None = None) -> str:
        expires = str(int(_now(now) + SIGNIN_HOURS * 3600))
        return f"{expires}.{self._sign(expires)}"

    def valid(self, cookie: str | None, now: float | None = None) -> bool:
        expires, _, mac = (cookie or "").partition(".")
        return (expires.isascii() and expires.isdigit()
                and hmac.compare_digest(self._sign(expires).encode(), mac.encode("utf-8", "replace"))
                and int(expires) > _now(now))

    def _sign(self, expires: str) -> str:
        return hmac.new(self._key, f"{AUDITOR}|{expires}".encode(), hashlib.sha256).hexdigest()


CLIENT_COOKIE = "candor-client"


class ClientIds:
    """The identity a browser or API client without sign-in gets from the server: a random id signed with the server's
    key, in an HttpOnly cookie. Replicas share the key through CANDOR_SESSION_KEY (else it is per process)."""

    def __init__(self, key: bytes | None = None):
        import os

        from bot.store import SESSION_KEY_ENV

        env = os.environ.get(SESSION_KEY_ENV, "").encode()
        self._key = hmac.new(key or env or secrets.token_bytes(32), b"candor client id", hashlib.sha256).digest()

    def issue(self) -> str:
        client = secrets.token_urlsafe(16)
        return f"{client}.{self._sign(client)}"

    def verify(self, cookie: str | None) -> str | None:
        """The client id of a cookie this server signed; None for anything else."""
        client, _, mac = (cookie or "").partition(".")
        if client and mac and hmac.compare_digest(self._sign(client).encode(), mac.encode("utf-8", "replace")):
            return client
        return None

    def _sign(self, client: str) -> str:
        return hmac.new(self._key, client.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]


CLIENT_IDS = ClientIds()  # one per process: the middleware issues, the web app reads (ui/http.py, ui/web.py)


def identity(request) -> str | None:
    """Who owns a request's conversations: the signed-in user, else the server-issued client id; None: neither."""
    user = gradio_user(request)
    if user:
        return f"user:{user}"
    client = CLIENT_IDS.verify(cookies(request).get(CLIENT_COOKIE))
    return f"client:{client}" if client else None


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


# ---------------------------------------------------------------- the REST API's bearer tokens
TOKEN_ROLES = ("chat", "auditor")
MIN_TOKEN = 32


@dataclass(frozen=True)
class Token:
    name: str  # who holds it (an integration: "website-widget", "crm"); conversations are kept per name
    role: str  # chat: POST /v1/chat and the Rasa webhook; auditor: GET /v1/turns


def read_tokens(path: str | Path) -> dict[bytes, Token]:
    """`name:role:token` per line (role: chat or auditor; token at least 32 characters, e.g. from
    `python -c "import secrets; print(secrets.token_urlsafe(32))"`); blank lines and `#` comments skipped. Kept as
    SHA-256 digests, looked up by the digest of the presented token. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AuthError(f"{path}: tokens file not found")
    tokens: dict[bytes, Token] = {}
    names: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise AuthError(f"{path}:{n}: expected name:role:token")
        name, role, token = (p.strip() for p in parts)
        if role not in TOKEN_ROLES:
            raise AuthError(f"{path}:{n}: role '{role}' — roles are {', '.join(TOKEN_ROLES)}")
        if len(token) < MIN_TOKEN:
            raise AuthError(f"{path}:{n}: the token of '{name}' is shorter than {MIN_TOKEN} characters")
        if name in names:
            raise AuthError(f"{path}:{n}: '{name}' is listed twice")
        digest = hashlib.sha256(token.encode()).digest()
        if digest in tokens:
            raise AuthError(f"{path}:{n}: the token of '{name}' is also '{tokens[digest].name}''s")
        names.add(name)
        tokens[digest] = Token(name, role)
    if not tokens:
        raise AuthError(f"{path}: no tokens in the tokens file")
    return tokens


def find_token(tokens: dict[bytes, Token], presented: str) -> Token | None:
    return tokens.get(hashlib.sha256(presented.encode("utf-8", "replace")).digest())


class RateLimit:
    """A token bucket per key: `rate` requests a second on average, bursts of `burst`. `take(key)` → 0 if allowed,
    else the seconds until the next request would be."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 10_000):
        self.rate, self.burst = rate, burst if burst is not None else max(1.0, 2 * rate)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.max_keys = max_keys
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            level, then = self.buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - then) * self.rate)
            if level < 1:
                self.buckets[key] = (level, now)
                return (1 - level) / self.rate
            self.buckets[key] = (level - 1, now)
            if len(self.buckets) > self.max_keys:  # forget the longest unused tenth (a dict keeps insertion order)
                for k in list(self.buckets)[: self.max_keys // 10]:
                    self.buckets.pop(k, None)
            self.buckets[key] = self.buckets.pop(key)  # newest last
            return 0.0

    def refund(self, key: str) -> None:
        """Give back what `take` took (a request that turned out not to count, e.g. a successful sign-in)."""
        with self._lock:
            if key in self.buckets:
                level, then = self.buckets[key]
                self.buckets[key] = (min(self.burst, level + 1), then)
