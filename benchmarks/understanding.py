"""Understanding (issue 28): free wording, typos and attacks, for a trained demo model, beside TF-IDF baselines.

Every message is read as served (`safety.guard.read_message`: normalisation, the word-recognition front end when
the model's bot file turns it on, PII redaction), then classified by the served bot with its fallback rule.

- Free wording: benchmarks/data/free_wording_{dev,test}.csv — messages written by three writers who saw only the
  intent names and a one-line description of each (benchmarks/data/SOURCE.md). Tune on `dev`; score `test` once
  per approach (`--split test`). In scope: right intent (top-1), answered right (right and no fallback),
  confidently wrong (answered, wrong intent); out of scope: fallback rate (recall).
- Baselines on the same messages in the same run: TF-IDF word (1-2) + char_wb (2-5) n-grams, fitted on the bot
  file's examples as served, with logistic regression (also with a fallback below the bot's confidence threshold)
  and LinearSVC.
- The templated test set of the bot file, clean and with random keyboard typos (TextAttack, the `typo` augmenter's
  transformations) in 10/20/30% of the words; `--attacks N`: DeepWordBug, Pruthi and PWWS through
  `safety.attack_report.run` (what `candor attack` runs) on N test messages.

    python benchmarks/understanding.py --train-demo benchmarks/out/understanding/demo   # train (timed), then measure
    python benchmarks/understanding.py --model models/support_demo --split dev --attacks 200

Prints a table; writes benchmarks/out/understanding/<label>.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np

from bot.dialogue import Bot, Conversation
from bot.spec import OUT_OF_SCOPE, demo_bot_path, load_bot
from safety.guard import Rejected, read_message, served_text

DATA = Path(__file__).resolve().parent / "data"
OUT = Path(__file__).resolve().parent / "out" / "understanding"


def free_wording(split: str) -> list[tuple[str, str]]:
    with open(DATA / f"free_wording_{split}.csv", newline="", encoding="utf-8") as f:
        return [(r["text"], r["intent"]) for r in csv.DictReader(f)]


def score(pred: list[str], answered: list[bool], gold: list[str]) -> dict:
    """In scope: right (top-1), answered right, confidently wrong, fell back; out of scope: fallback recall."""
    ins = [i for i, g in enumerate(gold) if g != OUT_OF_SCOPE]
    oos = [i for i, g in enumerate(gold) if g == OUT_OF_SCOPE]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"n": len(ins), "right": mean([pred[i] == gold[i] for i in ins]),
            "answered_right": mean([answered[i] and pred[i] == gold[i] for i in ins]),
            "confidently_wrong": mean([answered[i] and pred[i] != gold[i] for i in ins]),
            "fell_back": mean([not answered[i] for i in ins]),
            "n_oos": len(oos), "oos_recall": mean([not answered[i] for i in oos])}


def served(texts: list[str]) -> list[str]:
    out = []
    for t in texts:
        try:
            out.append(read_message(t).text)
        except Rejected:
            out.append("")
    return out


def classify(bot: Bot, texts: list[str]) -> tuple[list[str], list[bool]]:
    decisions = bot.classify_batch(texts, [Conversation() for _ in texts])
    return [d.intent for d in decisions], [not d.fallback for d in decisions]


def baselines(spec, texts: list[str], threshold: float) -> dict[str, tuple[list[str], list[bool]]]:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    train = [(served_text(e.text), name) for name, intent in spec.intents.items() for e in intent.examples]
    x, y = [t for t, _ in train], [n for _, n in train]
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    fx = hstack([word.fit_transform(x), char.fit_transform(x)]).tocsr()
    tx = hstack([word.transform(texts), char.transform(texts)]).tocsr()
    lr = LogisticRegression(C=10, max_iter=2000).fit(fx, y)
    p = lr.predict_proba(tx)
    lr_pred = [lr.classes_[i] for i in p.argmax(1)]
    svm_pred = list(LinearSVC(C=1.0).fit(fx, y).predict(tx))
    everyone = [True] * len(texts)
    return {"tfidf_lr": (lr_pred, everyone), f"tfidf_lr_fallback@{threshold}": (lr_pred, list(p.max(1) >= threshold)),
            "tfidf_svm": (svm_pred, everyone)}


def typos(texts: list[str], pct: float, seed: int = 0) -> list[str]:
    from safety.augment import _typo
    from safety.resources import seeded, textattack

    aug = _typo(textattack(), pct)
    out = []
    for i, t in enumerate(texts):
        with seeded(seed + i):
            got = aug.augment(t)
        out.append(got[0] if got else t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a trained demo model directory")
    p.add_argument("--train-demo", metavar="OUT", help="train the demo bot with the defaults into OUT first (timed)")
    p.add_argument("--split", choices=("dev", "test"), default="dev")
    p.add_argument("--attacks", type=int, default=0, metavar="N", help="attack N test messages (0: no attacks)")
    p.add_argument("--label", default=None, help="the approach's name in the table and the JSON file")
    p.add_argument("--corrections", type=int, default=0, metavar="K",
                   help="add K development messages per intent to the bot file as auditors' corrections (as `candor "
                        "data corrections` would): --train-demo trains on them; give the same K with --model to score "
                        "--split test against baselines fitted on the same corrected examples")
    args = p.parse_args()
    if not (args.model or args.train_demo):
        p.error("give --model or --train-demo")
    spec, _ = load_bot(demo_bot_path())
    result = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d"), "split": args.split}
    model = args.model
    if args.corrections:  # the same corrected bot file for the model and the baselines, whichever split is scored
        import random

        from bot.spec import Example

        by_intent: dict[str, list[str]] = {}
        for text, intent in free_wording("dev"):
            by_intent.setdefault(intent, []).append(text)
        rng = random.Random(0)
        for intent, texts in by_intent.items():
            if intent != OUT_OF_SCOPE:
                for text in rng.sample(texts, min(args.corrections, len(texts))):
                    spec.intents[intent].examples.append(Example(read_message(text).text, intent))
        result["corrections_per_intent"] = args.corrections
    if args.train_demo:
        from ui.verbs.serve import train_demo

        t = time.perf_counter()
        if args.corrections:
            from bot.train import train
            from safety.guard import served_text as read
            from ui.verbs.train import views

            train(spec, Path(args.train_demo), resume=True, views=views(spec), read=read)
        else:
            train_demo(Path(args.train_demo))  # training, then `candor eval` and a short `candor attack`
        result["main_command_s"] = round(time.perf_counter() - t, 1)
        model = args.train_demo
    from bot.model import read_card

    result["train_s"] = read_card(model).get("training", {}).get("seconds")
    bot = Bot(model)
    label = args.label or Path(model).name
    rows = {}

    messages = free_wording(args.split)
    texts, gold = served([t for t, _ in messages]), [g for _, g in messages]
    t = time.perf_counter()
    rows["candor"] = score(*classify(bot, texts), gold)
    result["classify_ms_per_message"] = round(1000 * (time.perf_counter() - t) / len(texts), 2)
    for name, (pred, answered) in baselines(spec, texts, bot.settings.confidence_threshold).items():
        rows[name] = score(pred, answered, gold)
    result["free_wording"] = rows

    test = [(e.text, e.intent) for e in spec.test if e.intent != OUT_OF_SCOPE]
    clean = [t for t, _ in test]
    tgold = [g for _, g in test]
    acc = {}
    for pct in (0.0, 0.1, 0.2, 0.3):
        pred, _ = classify(bot, served(typos(clean, pct) if pct else clean))
        acc[f"{pct:.0%}"] = float(np.mean([a == b for a, b in zip(pred, tgold)]))
    result["templated_test_typos"] = acc

    from oos import banking_oos, sgd_test_oos  # benchmarks/oos.py's questions the demo bot was never taught

    oos = {"BANKING77": banking_oos(1000, 0), "SGD test split": sgd_test_oos(1000, 0)}
    t = time.perf_counter()
    result["oos_recall"] = {name: float(np.mean([not a for a in classify(bot, served(texts))[1]]))
                            for name, texts in oos.items()}
    result["oos_recall"]["all"] = float(np.mean(list(result["oos_recall"].values())))
    result["classify_ms_per_oos_question"] = round(1000 * (time.perf_counter() - t) / 2000, 2)

    if args.attacks:
        from safety.attack_report import DEFAULT_RECIPES, run

        report = run(model, spec.test, DEFAULT_RECIPES, n=args.attacks, log=lambda *a: None, source="demo test")
        result["attacks"] = {r["recipe"]: r.get("attack_success_rate") for r in report["recipes"]}

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{label}-{args.split}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"{label}, free wording ({args.split}, {rows['candor']['n']} in scope, {rows['candor']['n_oos']} out of scope)")
    print("| model | right | answered right | confidently wrong | fell back | OOS recall |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['right']:.1%} | {r['answered_right']:.1%} | {r['confidently_wrong']:.1%} | "
              f"{r['fell_back']:.1%} | {r['oos_recall']:.2f} |")
    print("templated test accuracy by share of words with a typo: " +
          ", ".join(f"{k} {v:.1%}" for k, v in acc.items()) + f"; 30% / clean = {acc['30%'] / acc['0%']:.3f}")
    print("OOS recall (benchmarks/oos.py's questions, 1,000 each): " +
          ", ".join(f"{k} {v:.3f}" for k, v in result["oos_recall"].items()))
    if "attacks" in result:
        print("attack success: " + ", ".join(f"{k} {v}" for k, v in result["attacks"].items()))
    print(f"training: {result['train_s']} s" + (f"; the main command's training and measuring: "
                                                 f"{result['main_command_s']} s" if "main_command_s" in result else ""))


if __name__ == "__main__":
    main()
