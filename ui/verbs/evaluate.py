"""`candor eval [MODEL]`"""
from __future__ import annotations

from pathlib import Path

from bot import card as cards
from bot.dialogue import Bot
from bot.evaluate import FILES, OOS_FILE, evaluate as run_eval, other_rules, reply_measures, write_reports
from bot.io import atomic_write_json
from bot.spec import Example, demo_bot_path, load_bot
from safety.guard import served_text
from ui.verbs import add_model, count


def bot_file_for(card: dict, given: str | None) -> Path:
    """The bot file to take test examples from: `given`, else the one the model (its card) was trained from."""
    source = given or card.get("bot", {}).get("source_file")
    if (not source or not Path(source).is_file()) and card.get("bot", {}).get("name") == "support_demo":
        source = demo_bot_path()
    if not source or not Path(source).is_file():
        raise FileNotFoundError(f"can't find the bot file this model was trained from ({source}); pass --bot FILE")
    return Path(source)


REPLY_FILE = "reply_report.json"


def add_arguments(p) -> None:
    add_model(p)
    p.add_argument("--bot", help="bot YAML whose 'test:' section to use (default: the one it was trained from)")
    p.add_argument("-o", "--out", help="report directory (default: <model>/reports)")
    p.add_argument("--no-redact", action="store_true", help="read the test messages without PII redaction, to "
                   "measure what redaction costs (reports go to <model>/reports/no-redaction; the card is untouched)")
    p.add_argument("--target-oos-recall", type=float, default=0.8, metavar="R",
                   help="suggest the confidence threshold at which this share of the out-of-scope test questions "
                        "falls back (default 0.8); written to the report, applied only with --apply-threshold")
    p.add_argument("--replies", action="store_true",
                   help="also measure replies against the test set's held-out reference replies (`reply:`): ROUGE-L "
                        "and repetition for template, grounded, generated and generate-mode replies")
    p.add_argument("--reply-limit", type=count, default=200, metavar="N",
                   help="with --replies: at most this many test examples (0: all of them; default 200)")
    p.add_argument("--apply-threshold", action="store_true",
                   help="serve with the suggested threshold: write it to the model's settings (its card)")


def run(args) -> int:
    bot = Bot(args.model)
    source = bot_file_for(bot.card, args.bot)
    spec, _ = load_bot(source)
    if not spec.test:
        print(f"candor eval: {source} has no 'test:' examples to evaluate on")
        return 1
    test = [Example(served_text(e.text, redact=not args.no_redact), e.intent, e.line, e.reply)  # as a turn reads them
            for e in spec.test]
    if not 0 < args.target_oos_recall <= 1:
        print(f"candor eval: --target-oos-recall must be above 0 and at most 1, got {args.target_oos_recall}")
        return 2
    result = run_eval(bot.model, bot.enc, test, bot.settings, target_oos_recall=args.target_oos_recall,
                      neighbours=bot.neighbours)
    s = result["summary"]
    sug = s.get("suggested_threshold")
    if args.apply_threshold:
        if not sug:
            print(f"candor eval: {source} has no out_of_scope test questions, so there is no threshold to apply")
            return 1
        if args.no_redact:
            print("candor eval: --apply-threshold needs the test set read as served (without --no-redact)")
            return 2
        if not sug["confidence_threshold"]:
            print(f"candor eval: {other_rules(s)} OOS recall {sug['oos_recall']:.3f} "
                  f"(target {sug['target_oos_recall']:g}), so no confidence threshold is needed for it; nothing "
                  f"applied: the served threshold stays {bot.settings.confidence_threshold:g}")
    if args.apply_threshold and sug["confidence_threshold"]:
        cards.update(args.model, settings={**bot.card.get("settings", {}), "confidence_threshold": sug["confidence_threshold"]})
        bot.settings.confidence_threshold = sug["confidence_threshold"]  # measured again at the threshold now served
        result = run_eval(bot.model, bot.enc, test, bot.settings, target_oos_recall=args.target_oos_recall,
                          neighbours=bot.neighbours)
        s = result["summary"]
        sug = s["suggested_threshold"]
        sug["applied"] = True
    replies = reply_measures(bot, test, limit=args.reply_limit) if args.replies else None
    if replies:
        s["replies"] = {"examples": replies["examples"], **replies["ways"]}
    out = write_reports(result, args.out or Path(args.model) / "reports" / ("no-redaction" if args.no_redact else ""))
    if replies:
        atomic_write_json(out / REPLY_FILE, replies)
    if not args.no_redact:
        cards.update(args.model, metrics=s)
    print(f"{s['test_examples']} test utterances ({s['oos_examples']} out of scope), confidence threshold "
          f"{s['confidence_threshold']:g}, temperature {s['temperature']:g}")
    print(f"  in scope: accuracy {s['accuracy']:.3f} without fallback, {s['accuracy_with_fallback']:.3f} with it "
          f"(fallback rate {s['fallback_rate']:.3f}); macro-F1 {s['macro_f1']:.3f}; "
          f"expected calibration error {s['ece']:.3f}")
    if "distance_threshold" in s:
        print(f"  distance rule: threshold {s['distance_threshold']:g}; {s['unfamiliar_rate']:.3f} of the in-scope "
              "questions lie beyond it")
    if s["oos_recall"] is not None:
        print(f"  out of scope: recall {s['oos_recall']:.3f}" + (f", AUROC {s['auroc']:.3f}" if s["auroc"] else "")
              + (f"; distance rule alone: AUROC {s['distance_auroc']:.3f}" if s.get("distance_auroc") is not None
                 else ""))
        if not sug["confidence_threshold"]:
            print(f"  suggested threshold for OOS recall ≥ {sug['target_oos_recall']:g}: none needed ({other_rules(s)} "
                  f"OOS recall {sug['oos_recall']:.3f})" + (f"; {sug['note']}" if sug.get("note") else ""))
        else:
            print(f"  suggested threshold for OOS recall ≥ {sug['target_oos_recall']:g}: {sug['confidence_threshold']:g} "
                  f"(OOS recall {sug['oos_recall']:.3f}, in-scope accuracy with fallback "
                  f"{sug['accuracy_with_fallback']:.3f})" + (f"; {sug['note']}" if sug.get("note") else "")
                  + ("; APPLIED: the model now serves with it" if sug["applied"] else "; apply it with --apply-threshold"))
    if args.replies and not replies:
        print(f"  replies: {source} has no test examples with a reference 'reply:' to measure against")
    elif replies:
        print(f"  replies to {replies['examples']} test examples against their held-out references (true intent):")
        print("    way             ROUGE-L  repetition  words")
        for way, m in replies["ways"].items():
            print(f"    {way:<15} {m['rouge_l']:.3f}    {m['repetition']:.3f}       {m['mean_words']:.0f}"
                  + (f"   (kept the generated reply {m['kept_generated']:.0%} of the time)" if "kept_generated" in m else ""))
    written = set(FILES) | ({OOS_FILE} if s["oos_examples"] else set()) | ({REPLY_FILE} if replies else set())
    for name in sorted(written):
        print(f"  wrote {out / name}")
    return 0
