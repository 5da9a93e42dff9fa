"""`candor explain [MODEL] "text"` (terminal, --json, --html FILE) and `candor explain --evaluate`."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from bot.dialogue import Bot, Conversation
from bot.io import atomic_write_text
from bot.spec import OUT_OF_SCOPE, load_bot
from bot.turn import turn
from explain import faithfulness, render
from explain.attribution import IntentExplainer
from explain.reply import explain_reply
from safety.guard import Rejected, read_message, served_text
from ui.verbs.evaluate import bot_file_for

USAGE = ("`candor explain TEXT`, `candor explain MODEL TEXT` or `candor explain -m MODEL TEXT`: two positionals are "
         "MODEL and TEXT; a single one is the TEXT (with --evaluate, which explains no given text, the MODEL)")


def add_arguments(p) -> None:
    from ui.verbs import DEFAULT_MODEL

    p.epilog = USAGE
    p.add_argument("model", nargs="?", metavar="MODEL", help=f"model directory (default: {DEFAULT_MODEL})")
    p.add_argument("text", nargs="?", metavar="TEXT", help="the message to explain")
    p.add_argument("-m", "--model", dest="model_option", metavar="MODEL", help="the model directory, as MODEL")
    p.add_argument("--intent", help="explain this intent instead of the predicted one")
    p.add_argument("--reply", action="store_true", help="also attribute the reply to the message's words")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument("--html", help="write an HTML report to this file")
    p.add_argument("--no-colour", action="store_true", help="plain words in the terminal")
    p.add_argument("--steps", type=int, default=32, help="integration steps (default 32)")
    p.add_argument("--evaluate", action="store_true",
                   help="faithfulness table (comprehensiveness/sufficiency) on the test set")
    p.add_argument("--bot", help="with --evaluate: bot YAML with the test set (default: the training bot file)")
    p.add_argument("--limit", type=int, default=200, help="with --evaluate: at most this many test texts")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def model_and_text(args) -> tuple[str, str | None]:
    """The MODEL and TEXT the positionals and -m name (see USAGE)."""
    from ui.verbs import DEFAULT_MODEL

    given = [a for a in (args.model, args.text) if a is not None]
    if args.model_option is not None:
        if len(given) > 1:
            raise ValueError(f"MODEL given twice (-m {args.model_option} and {given[0]}); {USAGE}")
        return args.model_option, given[0] if given else None
    if len(given) == 2:
        return given[0], given[1]
    if given and args.evaluate:
        return given[0], None
    return DEFAULT_MODEL, given[0] if given else None


def run(args) -> int:
    try:
        args.model, args.text = model_and_text(args)
    except ValueError as e:
        print(f"candor explain: {e}", file=sys.stderr)
        return 2
    return explain(args)


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
    try:  # the served turn: read as a served message is (guarded, PII redacted), so what is explained is what the
        # served bot decides
        answer = turn(bot, args.text, Conversation(), read=read_message, explain=explainer.explain_batch)
    except Rejected as e:
        print(f"candor explain: the bot would not read this message: {e}", file=sys.stderr)
        return 2
    explained = args.intent in (None, answer.intent)
    e = answer.explanation if explained else explainer.explain(answer.text, args.intent)
    if args.reply:  # the served reply, unless the bot fell back or another intent is explained: that intent's reply
        reply = answer.reply if explained and not answer.fallback else bot.reply(answer.text, e.intent, [])
        e.reply = {"text": reply, **explain_reply(bot.model, bot.enc, answer.text, e.intent, reply)}
    if args.html:
        atomic_write_text(args.html, render.html_report(e))
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(render.as_json(e))
    elif not args.html:
        if answer.text != args.text:
            print(f"read as: {answer.text}")
        if answer.fallback:
            print(f"the bot falls back ({answer.fallback_reason}): it answers with its fallback text")
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
