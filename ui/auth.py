"""Who may open the app: localhost without sign-in, anywhere else only with it."""
from __future__ import annotations

import hmac
from pathlib import Path

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class AuthError(ValueError):
    pass


def check_binding(host: str, users: dict[str, str] | None) -> None:
    """Refuse to serve beyond this machine without sign-in."""
    if host not in LOCAL_HOSTS and not users:
        raise AuthError(f"refusing to bind to {host} without authentication: anyone who can reach it could read "
                        "the chat and audit log. Pass --auth-file FILE (lines of user:password), or bind to 127.0.0.1.")


def read_users(path: str | Path) -> dict[str, str]:
    """`user:password` per line; blank lines and `#` comments skipped. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AuthError(f"{path}: auth file not found")
    users: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise AuthError(f"{path}:{n}: expected user:password")
        if len(password) < 8:
            raise AuthError(f"{path}:{n}: the password of '{user.strip()}' is shorter than 8 characters")
        users[user.strip()] = password
    if not users:
        raise AuthError(f"{path}: no users in the auth file")
    return users


def checker(users: dict[str, str]):
    """Gradio's `auth=` callable; constant-time comparison."""
    def ok(user: str, password: str) -> bool:
        expected = users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())
    return ok
