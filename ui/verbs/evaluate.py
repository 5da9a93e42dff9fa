"""`candor eval [MODEL_DIR]`"""
from __future__ import annotations

from pathlib import Path

from bot import card as cards
from bot.dialogue import Bot
from bot.evaluate import FILES, evaluate as run_eval, write_reports
from bot.spec import Example, demo_bot_path, load_bot
from safety.guard import served_text


def bot_file_for(card: dict, given: str | None) -> Path:
    """The bot file to take test examples from: `given`, else the one the model (its card) was trained from."""
    source = given or card.get("bot", {}).get("source_file")
    if (not source or not Path(source).is_file()) and card.get("bot", {}).get("name") == "support_demo":
        source = demo_bot_path()
    if not source or not Path(source).is_file():
        raise FileNotFoundError(f"can't find the bot file this model was trained from ({source}); pass --bot FILE")
    return Path(source)


def evaluate(args) -> int:
    bot = Bot(args.model)
    source = bot_file_for(bot.card, args.bot)
    spec, _ = load_bot(source)
    if not spec.test:
        print(f"candor eval: {source} has no 'test:' examples to evaluate on")
        return 1
    test = [Example(served_text(e.text, redact=not args.no_redact), e.intent, e.line)  # as a served turn reads them
            for e in spec.test]
    result = run_eval(bot.model, bot.enc, test, bot.settings)
    out = write_reports(result, args.out or Path(args.model) / "reports" / ("no-redaction" if args.no_redact else ""))
    if not args.no_redact:
        cards.update(args.model, metrics=result["summary"])
    s = result["summary"]
    print(f"{s['test_examples']} test utterances: accuracy {s['accuracy']:.3f}, macro-F1 {s['macro_f1']:.3f}, "
          f"fallback rate {s['fallback_rate']:.3f}"
          + (f", out-of-scope recall {s['oos_recall']:.3f}" if s["oos_recall"] is not None else ""))
    for name in FILES:
        print(f"  wrote {out / name}")
    return 0
