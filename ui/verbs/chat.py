"""`candor chat [MODEL_DIR]` — a terminal REPL."""
from __future__ import annotations

import sys

from bot.dialogue import Bot, Conversation
from bot.turn import turn
from safety.guard import Rejected, read_message

HELP = "Type a message. /reset starts a new conversation, /quit (or Ctrl-D) leaves."


def add_arguments(p) -> None:
    from ui.verbs import add_model

    add_model(p)
    p.add_argument("--mode", choices=["template", "generate"], help="override the bot's response mode")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    return chat(args)


def chat(args, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    bot = Bot(args.model, device=args.device, response_mode=args.mode)
    name = bot.card.get("bot", {}).get("name", "bot")
    print(f"{name} ({len(bot.model.intents)} intents, {bot.settings.response_mode} replies). {HELP}", file=stdout)
    conversation = Conversation()
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            conversation = Conversation()
            print("(new conversation)", file=stdout)
            continue
        try:
            r = turn(bot, text, conversation, read=read_message)  # as served: normalised, PII redacted first
        except Rejected as e:
            print(f"     [not sent: {e}]", file=stdout, flush=True)
            continue
        conversation.turns.append(r.as_turn())
        print(f"bot> {r.reply}", file=stdout)
        flag = f"FALLBACK ({r.fallback_reason})" if r.fallback else "no fallback"
        far = "" if r.distance is None else f", distance {r.distance:.3f} (unfamiliar beyond {r.distance_threshold:.3f})"
        print(f"     [intent {r.intent}, confidence {r.confidence:.2f}{far}, {flag}]", file=stdout, flush=True)
    return 0
