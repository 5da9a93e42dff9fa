"""Load: N concurrent `gradio_client` users × M turns against a local `candor serve` (loopback only).

Starts `candor serve MODEL` on a free local port (or uses `--url` of one already running on this
machine), then every user sends M messages from the bot's test set through the documented `/respond`
API, one after another, all users at once. Prints errors, throughput and p50/p95/max latency per turn.
Bounded: at most 256 users and 1,000 turns each, and `--time-limit` seconds in all (default 600), after
which it stops by itself and reports what finished.

    python benchmarks/load.py                      # demo model, 32 users x 25 turns, explanations on
    python benchmarks/load.py --users 4 --turns 3  # a short form
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
            t0 = time.perf_counter()
            try:
                out = client.predict(rng.choice(messages), api_name="/respond")
                ok = isinstance(out, dict) and "intent" in out
            except Exception as e:  # noqa: BLE001 - counted and reported
                ok, out = False, e
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors.append(f"user {i}: {str(out)[:200]}")

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.time() + 30))
    wall = time.time() - t0
    return {"latencies": latencies, "errors": errors, "wall_s": wall, "users": users, "turns": turns,
            "timed_out": time.time() > deadline}


def summary(result: dict) -> dict:
    lat = sorted(result["latencies"])

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    done = len(lat)
    return {"users": result["users"], "turns_each": result["turns"], "ok": done, "errors": len(result["errors"]),
            "throughput": done / result["wall_s"] if result["wall_s"] else 0.0, "p50_s": q(0.5), "p95_s": q(0.95),
            "max_s": lat[-1] if lat else float("nan"), "wall_s": result["wall_s"], "timed_out": result["timed_out"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/support_demo")
    p.add_argument("--url", help="a candor serve already running on this machine (default: start one)")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--turns", type=int, default=25)
    p.add_argument("--time-limit", type=float, default=600.0)
    p.add_argument("--explain-steps", type=int, help="integration steps per explanation (default: the server's, 32)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "load.json")
    args = p.parse_args()
    from bot.spec import demo_bot_path, load_bot

    messages = [e.text for e in load_bot(demo_bot_path())[0].test]
    proc = None
    url = args.url
    if not url:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        db = args.out.parent / "load.audit.sqlite"
        db.unlink(missing_ok=True)
        proc, url = start_server(args.model, str(db), ["--explain-steps", str(args.explain_steps)]
                                 if args.explain_steps else [])
    try:
        result = run_load(url, args.users, args.turns, messages, args.time_limit)
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
    s = summary(result)
    import torch

    print(f"\n{platform.node()}, CPU, {os.cpu_count()} cores, torch {torch.__version__}; {url}; "
          f"model {args.model}; explanations on ({args.explain_steps or 32} integration steps)")
    print("| users × turns | ok | errors | throughput (turns/s) | p50 | p95 | max | wall |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {s['users']} × {s['turns_each']} | {s['ok']} | {s['errors']} | {s['throughput']:.1f} | "
          f"{s['p50_s'] * 1000:.0f} ms | {s['p95_s'] * 1000:.0f} ms | {s['max_s'] * 1000:.0f} ms | {s['wall_s']:.0f} s |"
          + (" (stopped at the time limit)" if s["timed_out"] else ""))
    for e in result["errors"][:5]:
        print("error:", re.sub(r"\s+", " ", e))
    args.out.write_text(json.dumps({**s, "errors_sample": result["errors"][:20]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
