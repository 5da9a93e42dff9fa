"""Who may open the web app."""
import subprocess
import sys
from pathlib import Path

import pytest

from ui.auth import AuthError, check_binding, checker, read_users

ROOT = Path(__file__).resolve().parents[1]


def test_localhost_needs_no_sign_in_but_anywhere_else_does():
    for host in ("127.0.0.1", "localhost", "::1"):
        check_binding(host, None)
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(AuthError, match=f"refusing to bind to {host} without authentication"):
            check_binding(host, None)
        check_binding(host, {"ana": "long-enough"})


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
    f.write_text("ana:correct-horse\nbob:pass:with:colons\n")
    users = read_users(f)
    assert users == {"ana": "correct-horse", "bob": "pass:with:colons"}
    ok = checker(users)
    assert ok("ana", "correct-horse") and ok("bob", "pass:with:colons")
    assert not ok("ana", "wrong") and not ok("eve", "correct-horse") and not ok("ana", "")


def test_serve_refuses_a_public_bind_without_auth_before_loading_anything(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ui.cli", "serve", str(tmp_path / "nomodel"), "--host", "0.0.0.0",
                          "--no-browser"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "refusing to bind to 0.0.0.0 without authentication" in res.stderr
