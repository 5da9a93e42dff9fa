"""`candor explain "text"` (terminal, --json, --html FILE) and `candor explain --evaluate`."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from bot.dialogue import Bot
from bot.io import atomic_write_text
from bot.spec import OUT_OF_SCOPE, load_bot
from explain import faithfulness, render
from explain.attribution import IntentExplainer
from explain.reply import explain_reply
from safety.guard import served_text
from ui.verbs.evaluate import bot_file_for


def explain(args) -> int:
    bot = Bot(args.model)
    explainer = IntentExplainer(bot.model, bot.enc, n_steps=args.steps, internal_batch_size=args.steps)
    if args.evaluate:
        return _evaluate(args, bot, explainer)
    if not args.text:
        print("candor explain: give a message to explain, or --evaluate", file=sys.stderr)
        return 2
    if args.intent and args.intent not in bot.model.intents:
        print(f"candor explain: unknown intent '{args.intent}' (known: {', '.join(bot.model.intents)})", file=sys.stderr)
        return 2
    e = explainer.explain(args.text, args.intent)
    if args.reply:
        reply = bot.reply(args.text, e.intent, [])
        e.reply = {"text": reply, **explain_reply(bot.model, bot.enc, args.text, e.intent, reply)}
    if args.html:
        atomic_write_text(args.html, render.html_report(e))
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(render.as_json(e))
    elif not args.html:
        print(render.terminal(e, colour=sys.stdout.isatty() and not args.no_colour))
    return 0


def _evaluate(args, bot, explainer) -> int:
    spec, _ = load_bot(bot_file_for(bot.card, args.bot))
    texts = [served_text(ex.text) for ex in spec.test if ex.intent != OUT_OF_SCOPE][: args.limit]  # as served
    if not texts:
        print("candor explain --evaluate: the bot file has no test examples", file=sys.stderr)
        return 1
    explanations = [explainer.explain(t) for t in tqdm(texts, desc="explaining", disable=args.quiet)]
    print(faithfulness.table(faithfulness.evaluate(bot.model, bot.enc, explanations)))
    worst = max(e.delta for e in explanations)
    print(f"largest convergence delta: {worst:.1e}")
    return 0
