"""Load: concurrent users against a local `candor serve` (loopback only), over REST and over the Gradio web path.

Starts `candor serve MODEL` on a free local port with a tokens file (one chat token per user, and an auditor's) and
the per-token rate limit raised out of the way (`--rate-limit 1000`: this measures the server, not the policy), then:
1. `--users` users × `--turns` turns, no think time, over REST (`POST /v1/chat`, one keep-alive connection each) and
   over the Gradio web path (`gradio_client`'s `/respond`: the queue and event stream the chat tab uses). Time to
   reply per turn: p50, p95, max; throughput; errors. Then how long after the run's end every turn's explanation is
   stored (read from the audit database).
2. One user alone, no think time, over REST: p50.
3. Capacity (`--capacity`): users who each send a message every 5 s on average (exponential gaps), `--capacity-users`
   at a time for `--capacity-seconds` each, over REST: the most users held at p95 ≤ 1 s.
Bounded: `--time-limit` seconds per phase (default 600), after which it stops and reports what finished.

    python benchmarks/load.py                        # demo model: 32 users x 25 turns, REST and web, one user alone
    python benchmarks/load.py --capacity             # and the capacity ladder
    python benchmarks/load.py --users 4 --turns 3    # a short form
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(path: Path, users: int) -> tuple[list[str], str]:
    """One chat token per user and an auditor's: (chat tokens, auditor token)."""
    import secrets

    chats = [secrets.token_urlsafe(32) for _ in range(users)]
    auditor = secrets.token_urlsafe(32)
    path.write_text("".join(f"user-{i}:chat:{t}\n" for i, t in enumerate(chats)) + f"auditor:auditor:{auditor}\n")
    path.chmod(0o600)
    return chats, auditor


def start_server(model: str, audit_db: str, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", model, "--port", str(port), "--no-browser",
                             "--audit-db", audit_db, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline, seen = time.time() + 300, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "Running on local URL" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return proc, f"http://127.0.0.1:{port}/"
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("candor serve did not start:\n" + "".join(seen))


def timed(call, ok, user: int, latencies: list, errors: list, lock) -> None:
    """One turn: its latency if `ok(answer)`, else an error line."""
    t0 = time.perf_counter()
    try:
        out = call()
        good = ok(out)
    except Exception as e:  # noqa: BLE001 - counted and reported
        good, out = False, e
    with lock:
        if good:
            latencies.append(time.perf_counter() - t0)
        else:
            errors.append(f"user {user}: {str(getattr(out, 'text', out))[:200]}")


def run_load(url: str, users: int, turns: int, messages: list[str], time_limit: float = 600.0,
             seed: int = 0) -> dict:
    """Every user: its own client, `turns` calls of /respond. Returns latencies (s), errors and wall time."""
    from gradio_client import Client

    host = urlparse(url).hostname
    if host not in LOCAL:
        raise SystemExit(f"benchmarks/load.py only loads a server on this machine (got {host})")
    if not 1 <= users <= 256 or not 1 <= turns <= 1000:
        raise SystemExit("--users 1..256 and --turns 1..1000")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.time() + time_limit
    start = threading.Barrier(users)

    def user(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"user {i}: connect: {e}")
            start.abort()
            return
        try:
            start.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        for _ in range(turns):
            if time.time() > deadline:
                return
            timed(lambda: client.predict(rng.choice(messages), api_name="/respond"),
                  lambda out: isinstance(out, dict) and "intent" in out, i, latencies, errors, lock)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.time() + 30))
    wall = time.time() - t0
    return {"latencies": latencies, "errors": errors, "wall_s": wall, "users": users, "turns": turns,
            "timed_out": time.time() > deadline}


def run_rest(url: str, tokens: list[str], turns: int, messages: list[str], time_limit: float = 600.0,
             think: float = 0.0, seed: int = 0, duration: float | None = None) -> dict:
    """Every user: its own token and keep-alive connection, `turns` calls of POST /v1/chat (or as many as fit in
    `duration` seconds), one after another with exponential think times of mean `think` seconds."""
    import httpx

    if urlparse(url).hostname not in LOCAL:
        raise SystemExit(f"benchmarks/load.py only loads a server on this machine (got {url})")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.time() + min(time_limit, duration or time_limit)
    start = threading.Barrier(len(tokens))

    def user(i: int, token: str) -> None:
        rng = random.Random(seed * 1000 + i)
        client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"})
        try:
            start.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        if think:
            time.sleep(rng.uniform(0, think))  # users arrive spread out, not all in the first instant
        n = 0
        while n < turns and time.time() < deadline:
            timed(lambda: client.post("v1/chat", json={"session": f"load-{i}", "message": rng.choice(messages)}),
                  lambda r: r.status_code == 200 and "intent" in r.json(), i, latencies, errors, lock)
            n += 1
            if think:
                time.sleep(rng.expovariate(1 / think))
        client.close()

    threads = [threading.Thread(target=user, args=(i, t), daemon=True) for i, t in enumerate(tokens)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.time() + 130))
    return {"latencies": latencies, "errors": errors, "wall_s": time.time() - t0, "users": len(tokens),
            "turns": turns, "timed_out": time.time() > deadline and not duration}


def explained_after(db: str, limit: float = 600.0) -> float:
    """Seconds until every logged turn's explanation is stored (polled in the audit database)."""
    sys.path.insert(0, str(ROOT))
    from bot.store import AuditStore

    store, t0 = AuditStore(db, lambda t: t), time.time()
    while store.count_unexplained() and time.time() - t0 < limit:
        time.sleep(0.25)
    return time.time() - t0 if not store.count_unexplained() else float("inf")


def summary(result: dict) -> dict:
    lat = sorted(result["latencies"])

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    done = len(lat)
    return {"users": result["users"], "turns_each": result["turns"], "ok": done, "errors": len(result["errors"]),
            "throughput": done / result["wall_s"] if result["wall_s"] else 0.0, "p50_s": q(0.5), "p95_s": q(0.95),
            "max_s": lat[-1] if lat else float("nan"), "wall_s": result["wall_s"], "timed_out": result["timed_out"]}


def row(name: str, s: dict) -> str:
    return (f"| {name} | {s['users']} × {s['turns_each']} | {s['ok']} | {s['errors']} | {s['throughput']:.1f} | "
            f"{s['p50_s'] * 1000:.0f} ms | {s['p95_s'] * 1000:.0f} ms | {s['max_s'] * 1000:.0f} ms | {s['wall_s']:.0f} s |"
            + (" (stopped at the time limit)" if s["timed_out"] else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/support_demo")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--turns", type=int, default=25)
    p.add_argument("--via", choices=["both", "rest", "gradio"], default="both")
    p.add_argument("--single-turns", type=int, default=100, help="turns of the one user alone (0: skip)")
    p.add_argument("--capacity", action="store_true", help="also find the most users held at p95 ≤ 1 s")
    p.add_argument("--capacity-users", default="50,100,150,200,300,400", help="the ladder of user counts")
    p.add_argument("--capacity-seconds", type=float, default=60.0)
    p.add_argument("--time-limit", type=float, default=600.0)
    p.add_argument("--explain-steps", type=int, help="integration steps per explanation (default: the server's, 32)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "load.json")
    args = p.parse_args()
    if not 1 <= args.users <= 256 or not 1 <= args.turns <= 1000:
        raise SystemExit("--users 1..256 and --turns 1..1000")
    from bot.spec import demo_bot_path, load_bot

    messages = [e.text for e in load_bot(demo_bot_path())[0].test]
    ladder = [int(n) for n in args.capacity_users.split(",")] if args.capacity else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    db = args.out.parent / "load.audit.sqlite"
    db.unlink(missing_ok=True)
    chats, _ = write_tokens(args.out.parent / "load.tokens", max([args.users, *ladder]))
    extra = ["--tokens-file", str(args.out.parent / "load.tokens"), "--rate-limit", "1000"]
    proc, url = start_server(args.model, str(db), extra + (["--explain-steps", str(args.explain_steps)]
                                                          if args.explain_steps else []))
    out: dict = {}
    rows = []
    try:
        if args.via in ("both", "rest"):
            out["rest"] = summary(run_rest(url, chats[: args.users], args.turns, messages, args.time_limit))
            rows.append(row("REST", out["rest"]))
            out["rest"]["explained_within_s"] = explained_after(str(db))
        if args.via in ("both", "gradio"):
            out["gradio"] = summary(run_load(url, args.users, args.turns, messages, args.time_limit))
            rows.append(row("Gradio web path", out["gradio"]))
            out["gradio"]["explained_within_s"] = explained_after(str(db))
        if args.single_turns:
            out["single"] = summary(run_rest(url, chats[:1], args.single_turns, messages, args.time_limit))
            rows.append(row("REST, one user alone", out["single"]))
        held = 0
        for n in ladder:
            s = summary(run_rest(url, chats[:n], 10**6, messages, think=5.0, duration=args.capacity_seconds))
            out[f"capacity_{n}"] = s
            rows.append(row(f"capacity: {n} users, a message every 5 s", s))
            if s["errors"] or s["p95_s"] > 1.0:
                break
            held = n
        if ladder:
            out["capacity_users_held"] = held
        metrics = __import__("httpx").get(url + "metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    import torch

    print(f"\n{platform.node()}, CPU, {os.cpu_count()} cores, torch {torch.__version__}; {url}; model {args.model}; "
          f"explanations on ({args.explain_steps or 32} integration steps); time to reply per turn")
    print("| path | users × turns | ok | errors | throughput (turns/s) | p50 | p95 | max | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for name in ("rest", "gradio"):
        if name in out:
            print(f"{name}: every turn's explanation stored {out[name]['explained_within_s']:.1f} s after the run ended")
    if ladder:
        print(f"capacity: {out['capacity_users_held']} users held at p95 ≤ 1 s (a message every 5 s each)")
    dropped = re.search(r"^candor_explanations_dropped_total (\S+)", metrics, re.M)
    print(f"explanations dropped from the queue (explained on reading instead): {dropped.group(1) if dropped else '?'}")
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
