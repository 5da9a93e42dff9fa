"""`candor serve [MODEL]` — the web app (trains the demo bot first when there is no model yet)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ui.auth import Access, AuthError, OneTimeSignIn, allowed_hosts, check_binding, checker, read_tokens, read_users
from ui.verbs import DEFAULT_MODEL, add_model


def add_arguments(p) -> None:
    add_model(p, default=None, help=f"model directory (default: {DEFAULT_MODEL}, trained first if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but localhost needs --auth-file)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth-file", help="sign-in users, one user:password per line; enables the audit tab")
    p.add_argument("--tokens-file", help="the REST API's bearer tokens, one name:role:token per line (role: chat or "
                                         "auditor); without it the REST API is off")
    p.add_argument("--rate-limit", type=float, default=20.0, help="REST requests a second per token (bursts of twice "
                                                                  "that); beyond, 429 with Retry-After")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a name clients reach this server by (its DNS name, the load balancer's); repeatable. "
                        "Requests with any other Host header are refused (needed with --host 0.0.0.0)")
    p.add_argument("--audit-db", help="SQLite file or SQLAlchemy URL (default: <model>.audit.sqlite)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--explain-steps", type=int, default=32, help="integration steps per explanation")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")


DEMO_ATTACK = ["-n", "50", "--recipe", "pruthi,deepwordbug", "--time-budget", "60", "-q"]  # `candor attack`'s


def train_demo(out: Path) -> None:
    """The bundled demo bot trained into `out` as `candor train -o OUT --resume` trains it (continuing from its
    checkpoints after an interruption), then measured so that its Model tab shows its numbers: `candor eval` (test
    metrics and plots) and a short `candor attack` (two character-level recipes on 50 test messages, at most a
    minute; `candor attack MODEL` runs the full one)."""
    from bot.spec import demo_bot_path, load_bot
    from bot.train import train
    from safety.guard import served_text
    from ui.cli import main
    from ui.verbs.train import views

    spec, _ = load_bot(demo_bot_path())
    train(spec, out, resume=True, views=views(spec), read=served_text)
    main(["eval", str(out)])
    main(["attack", str(out), *DEMO_ATTACK])


def run(args) -> int:
    try:
        users = read_users(args.auth_file) if args.auth_file else None
        tokens = read_tokens(args.tokens_file) if args.tokens_file else None
        check_binding(args.host, users)
        hosts = allowed_hosts(args.host, args.allowed_host)
        if args.rate_limit <= 0:
            raise AuthError("--rate-limit must be above 0")
    except AuthError as e:
        print(f"candor serve: {e}", file=sys.stderr)
        return 1
    model = Path(args.model or DEFAULT_MODEL)
    if not (model / "model.safetensors").is_file():
        if args.model is not None:
            raise FileNotFoundError(f"{model}: not a trained model directory (no model.safetensors)")
        print(f"{model} does not exist yet: training the demo bot first (a few minutes on a laptop CPU)")
        train_demo(model)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from starlette.middleware import Middleware

    from bot.store import AuditDatabaseError
    from ui.api import build_api
    from ui.http import Front, SessionOwners, export_route, signin_routes
    from ui.service import ChatService
    from ui.web import build

    audit_db = args.audit_db or f"{model}.audit.sqlite"
    print(f"loading {model}; audit log: {audit_db}")
    try:
        service = ChatService(model, audit_db, device=args.device, explain_steps=args.explain_steps)
    except AuditDatabaseError as e:
        print(f"candor serve: {e}", file=sys.stderr)
        return 1
    access = Access(users, None if users else OneTimeSignIn())
    app = build(service, access)
    app.queue(default_concurrency_limit=4, max_size=64, api_open=False)  # queued events only through the queue
    routes = [export_route(access, service.store), *signin_routes(access.one_time)]
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    if access.one_time:
        print(f"\nThe Audit tab needs this one-time password (a new one at every start; good for one sign-in within "
              f"an hour):\n"
              f"    {access.one_time.password}\nor open this sign-in link:\n    {url}signin?token={access.one_time.password}\n",
              flush=True)
    elif not access.auditors():
        print(f"note: no user in {args.auth_file} has the auditor role (user:password:auditor), so nobody can "
              "open the Audit tab", flush=True)
    api = build_api(service, tokens, rate=args.rate_limit)
    if tokens is None:
        print("The REST API is off (no --tokens-file).", flush=True)
    app.launch(server_name=args.host, server_port=args.port, auth=checker(users) if users else None,
               inbrowser=not args.no_browser, show_api=True, share=False, max_file_size="1mb", enable_monitoring=False,
               app_kwargs={"routes": routes, "middleware": [Middleware(Front, api=api, hosts=hosts),
                                                            Middleware(SessionOwners)]})
    return 0
