"""`candor redact "text"` — what the bot would store of a message: the guarded, redacted text."""
from __future__ import annotations

import json
import sys

from safety.guard import Rejected, guard
from safety.pii import NerUnavailable, ner_name, redact as run_redact


def add_arguments(p) -> None:
    p.add_argument("text", nargs="*", help="messages (default: one per line on standard input)")
    p.add_argument("--json", action="store_true", help="one JSON object per message: stored text, types, spans")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the types found")


def run(args) -> int:
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        print("candor redact: give a message, or lines on standard input", file=sys.stderr)
        return 2
    try:
        for text in texts:
            try:
                shown = guard(text)
            except Rejected as e:
                print(f"candor redact: not read: {e}", file=sys.stderr)
                return 1
            r = run_redact(shown)
            if args.json:
                print(json.dumps({"stored": r.text, "found": r.found, "ner": ner_name(),
                                  "spans": [{"start": s, "end": e, "entity": t} for s, e, t in r.spans or []]},
                                 ensure_ascii=False))
            else:
                print(r.text + (f"    [{', '.join(r.found)}]" if r.found and args.verbose else ""))
    except NerUnavailable as e:
        print(f"candor redact: {e}", file=sys.stderr)
        return 1
    return 0
