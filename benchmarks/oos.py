"""Out-of-scope detection: Candor's offline default (with and without outlier exposure) against a word+char
TF-IDF + logistic-regression baseline, on the same data, side by side in one run.

Two settings (`--setting`):

- `demo`: the bundled demo bot (27 customer-support intents; its own in-scope test set) against two sets of
  questions it was never taught: BANKING77 test questions from banking intents a shop does not handle
  (`BANKING_OOS` below), and Schema-Guided-Dialogue *test-split* user turns (the bundled outlier corpus is drawn
  from the *train* split; filtered as that corpus is: bot/demo/SOURCE.md). A few common phrasings occur in
  both splits, so about 2% of these texts are also in the outlier corpus.
- `banking77`: BANKING77 with 10 intents (drawn with seed 0) held out of training; their test questions are the
  out-of-scope ones, the other 67 intents' test questions the in-scope ones. Nothing like the held-out
  questions is in any outlier corpus: the hardest case.

Both models are scored with Candor's fallback rule (top probability below the threshold, or top-2 gap below the
ambiguity threshold), at the bot's default threshold 0.3, and each Candor model also as served, with its distance
rule (bot/neighbours.py; each question is read alone). The baseline is also read at the threshold where its
in-scope accuracy with fallback equals Candor's as served, so the OOS recalls compare at the same in-scope
accuracy. In the demo setting, 54 in-scope questions in everyday wording (benchmarks/data/demo_natural.csv) show
what the fallback rules cost on questions phrased unlike the bot's templated examples.

    python benchmarks/oos.py --setting demo        # trains two demo models (~35 min on 2 CPU cores)
    python benchmarks/oos.py --setting demo --reuse    # the same models, their distance rule fitted again
    python benchmarks/oos.py --setting banking77 --epochs 6
"""
from __future__ import annotations

import argparse
import csv
import gzip
import platform
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from bot.classify import predict
from bot.dialogue import Bot
from bot.importers import from_banking77
from bot.spec import OUT_OF_SCOPE, demo_bot_path, load_bot
from bot.train import refit_distance_rule, train
from safety.guard import served_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# BANKING77 intents about cards, cash, top-ups, currencies and transfers: nothing a shop's support bot handles
# (left out: refunds, payments, passwords, accounts and identity, which overlap the demo bot's intents).
BANKING_OOS = ["activate_my_card", "age_limit", "apple_pay_or_google_pay", "atm_support", "card_about_to_expire",
               "card_swallowed", "cash_withdrawal_charge", "change_pin", "country_support", "disposable_card_limits",
               "exchange_rate", "exchange_via_app", "fiat_currency_support", "get_disposable_virtual_card",
               "get_physical_card", "getting_spare_card", "getting_virtual_card", "lost_or_stolen_card",
               "pin_blocked", "top_up_by_bank_transfer_charge", "top_up_by_card_charge", "top_up_limits",
               "topping_up_by_card", "verify_top_up", "virtual_card_not_working", "visa_or_mastercard"]
MONEY = re.compile(r"\b(bank\w*|accounts?|balance|transfer\w*|pay\w*|paid|cards?|money|refund\w*|venmo|cash|dollars?|"
                   r"checking|savings|debit|credit|purchas\w*|orders?|ordering|deliver\w*|ship\w*|password|invoice|"
                   r"subscri\w*|complain\w*|fees?|charge\w*|prices?|cost\w*)\b|\$", re.I)  # as bot/demo/SOURCE.md


def banking_oos(n: int, seed: int) -> list[str]:
    with open(SHARED / "banking77" / "test.csv", encoding="utf-8", newline="") as fh:
        rows = [r["text"].strip() for r in csv.DictReader(fh) if r["category"] in BANKING_OOS]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def sgd_test_oos(n: int, seed: int) -> list[str]:
    seen, pool = set(), []
    with gzip.open(SHARED / "sgd_user_turns" / "sgd_user_turns.csv.gz", "rt", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            t = " ".join(r["text"].split())
            if (r["split"] == "test" and r["intent"] != "NONE" and r["service"].split("_")[0] not in ("Banks", "Payment")
                    and len(t.split()) >= 3 and not MONEY.search(t) and t.lower() not in seen):
                seen.add(t.lower())
                pool.append(t)
    return random.Random(seed).sample(pool, min(n, len(pool)))


def decide(probs: np.ndarray, threshold: float, ambiguity: float, distance: np.ndarray | None = None,
           tau: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmax, top probability, fallback) under Candor's rule (bot/classify.py: decide), with the distance rule
    (distance above `tau`: bot/neighbours.py) when distances are given."""
    part = np.sort(probs, 1)
    top, gap = part[:, -1], part[:, -1] - part[:, -2]
    fb = (top < threshold) | (gap < ambiguity)
    if distance is not None:
        fb = fb | (distance > tau)
    return probs.argmax(1), top, fb


def scores(probs_in, y_in, probs_oos, threshold, ambiguity, d_in=None, d_oos=None, tau=None) -> dict:
    pred, top, fb = decide(probs_in, threshold, ambiguity, d_in, tau)
    _, top_o, fb_o = decide(probs_oos, threshold, ambiguity, d_oos, tau)
    ok = pred == y_in
    labels = [0] * len(top) + [1] * len(top_o)
    return {"acc": ok.mean(), "acc_fb": (ok & ~fb).mean(), "oos_recall": fb_o.mean(),
            "auroc": roc_auc_score(labels, -np.concatenate([top, top_o])),
            "distance_auroc": None if d_in is None else roc_auc_score(labels, np.concatenate([d_in, d_oos]))}


def matched_threshold(probs_in, y_in, target_acc_fb, ambiguity) -> float:
    """The highest threshold at which the in-scope accuracy with fallback is still at least `target_acc_fb`."""
    best = 0.0
    for t in np.linspace(0, 1, 1001):
        pred, _, fb = decide(probs_in, t, ambiguity)
        if ((pred == y_in) & ~fb).mean() >= target_acc_fb:
            best = t
    return float(best)


def baseline_probs(train_x, train_y, texts, classes) -> np.ndarray:
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    x = hstack([word.fit_transform(train_x), char.fit_transform(train_x)]).tocsr()
    clf = LogisticRegression(C=10.0, max_iter=3000).fit(x, train_y)
    p = clf.predict_proba(hstack([word.transform(texts), char.transform(texts)]).tocsr())
    return p[:, [list(clf.classes_).index(c) for c in classes]]


def free_wording() -> list[tuple[str, str]]:
    """(text, intent): the demo bot's intents in everyday wording, written apart from its templates
    (benchmarks/data/SOURCE.md)."""
    with open(Path(__file__).parent / "data" / "demo_natural.csv", encoding="utf-8", newline="") as fh:
        return [(r["text"], r["intent"]) for r in csv.DictReader(fh)]


def setting(args):
    """(spec, in-scope test examples, {source: OOS texts}, in-scope questions worded freely (text, intent))."""
    if args.setting == "demo":
        spec, _ = load_bot(demo_bot_path())
        test = [e for e in spec.test if e.intent != OUT_OF_SCOPE]
        oos = {"BANKING77 (banking intents)": banking_oos(args.n_oos, args.seed),
               "SGD test split (travel, media, events…)": sgd_test_oos(args.n_oos, args.seed)}
        return spec, test, oos, free_wording()
    spec = from_banking77(SHARED / "banking77")
    held = sorted(random.Random(args.seed).sample(sorted(spec.intents), 10))
    spec.intents = {n: i for n, i in spec.intents.items() if n not in held}
    test = [e for e in spec.test if e.intent not in held]
    oos = {f"BANKING77 held-out intents ({', '.join(held)})": [e.text for e in spec.test if e.intent in held]}
    spec.test = []
    spec.model.max_length = 128
    spec.training.epochs, spec.training.pretrain_epochs, spec.training.checkpoint_every = args.epochs, 2, 0
    return spec, test, oos, []


def override(spec, item: str) -> None:
    """`section.key=value` (a bot-file setting) applied to `spec`, the value read as the setting's type."""
    key, eq, value = item.partition("=")
    section, _, name = key.partition(".")
    obj = getattr(spec, section, None)
    if not eq or obj is None or not name or not hasattr(obj, name):
        raise SystemExit(f"--set {item}: not a SECTION.KEY=VALUE bot-file setting")
    old = getattr(obj, name)
    setattr(obj, name, value.lower() in ("1", "true", "yes") if isinstance(old, bool) else type(old)(value))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=("demo", "banking77"), default="demo")
    p.add_argument("--n-oos", type=int, default=1000, help="out-of-scope questions per source (demo setting)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the bot's own; banking77: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ablation", action="store_true", help="skip the model without outlier exposure")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/oos"))
    p.add_argument("--reuse", action="store_true",
                   help="keep the models an earlier run of the same command trained; fit their distance rule again")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a bot-file setting for both Candor models, e.g. training.rdrop=1.0 (repeatable)")
    args = p.parse_args()
    if args.setting == "banking77" and args.epochs is None:
        args.epochs = 8
    spec, test, oos, free = setting(args)
    if args.epochs:
        spec.training.epochs = args.epochs
    for item in args.set:
        override(spec, item)
    th, amb = spec.settings.confidence_threshold, spec.settings.ambiguity_threshold
    read = [served_text(e.text) for e in tqdm(test, desc="reading the in-scope test set as served")]
    oos_read = {k: [served_text(t) for t in tqdm(v, desc=f"reading {k[:30]}")] for k, v in oos.items()}
    intents = list(spec.intents)
    y = np.array([intents.index(e.intent) for e in test])
    free_read = [served_text(t) for t, _ in free]
    y_free = np.array([intents.index(i) for _, i in free])

    rows, t0 = [], time.time()
    train_x = [served_text(e.text) for e in spec.examples]
    b_in = baseline_probs(train_x, [e.intent for e in spec.examples], read, intents)
    b_oos = {k: baseline_probs(train_x, [e.intent for e in spec.examples], v, intents) for k, v in oos_read.items()}
    rows.append({"name": "TF-IDF word+char + logistic regression", "in": b_in, "oos": b_oos, "secs": time.time() - t0,
                 "free": baseline_probs(train_x, [e.intent for e in spec.examples], free_read, intents) if free else None})

    variants = [("outlier exposure (default)", spec.training.outlier_weight)]
    if not args.no_ablation:
        variants.append(("no outlier exposure", 0.0))
    for label, weight in variants:
        spec.training.outlier_weight = weight
        t0 = time.time()
        out = args.out / f"{args.setting}-oe{weight:g}"
        if args.reuse and (out / "model.safetensors").is_file():  # the weights of an earlier run of this command
            refit_distance_rule(spec, out, read=served_text, log=lambda *a: None)
        else:
            train(spec, out, read=served_text, log=lambda *a: None)
        bot = Bot(out)
        m_in, d_in = predict(bot.model, bot.enc, read, bot.neighbours)
        m_oos = {k: predict(bot.model, bot.enc, v, bot.neighbours) for k, v in oos_read.items()}
        m_free, d_free = predict(bot.model, bot.enc, free_read, bot.neighbours) if free else (None, None)
        row = {"name": f"Candor GPT-2, {label}", "in": m_in.numpy(), "oos": {k: p.numpy() for k, (p, _) in m_oos.items()},
               "secs": time.time() - t0, "temp": bot.model.temperature,
               "free": None if m_free is None else m_free.numpy()}
        if bot.neighbours:  # the model as served (with its distance rule), then the same model without it
            rows.append({**row, "d_in": d_in.numpy(), "d_oos": {k: d.numpy() for k, (_, d) in m_oos.items()},
                         "tau": bot.neighbours.threshold, "d_free": None if d_free is None else d_free.numpy()})
            row = {**row, "name": row["name"] + ", without the distance rule", "secs": None}
        rows.append(row)

    print(f"\nOOS benchmark, setting {args.setting}: {len(test)} in-scope test questions, "
          + ", ".join(f"{len(v)} from {k}" for k, v in oos.items()))
    print(f"{platform.node()}, CPU, {torch.get_num_threads()} threads; threshold {th}, ambiguity {amb}"
          + (f"; overrides: {' '.join(args.set)}" if args.set else "") + "\n")
    print("| model | in-scope acc (no fallback) | in-scope acc with fallback | OOS recall (all) | "
          + " | ".join(f"OOS recall: {k.split(' (')[0]}" for k in oos)
          + " | AUROC (probability) | AUROC (distance) | distance threshold"
          + (" | free wording: acc (no fallback) | free wording: acc with fallback" if free else "")
          + " | temperature | wall time (s) |")
    print("|---" * (9 + len(oos) + 2 * bool(free)) + "|")
    def free_cells(probs, threshold, d=None, tau=None) -> list[str]:
        pred, _, fb = decide(probs, threshold, amb, d, tau)
        return [f"{(pred == y_free).mean():.4f}", f"{((pred == y_free) & ~fb).mean():.4f}"]

    candor = None
    for r in rows:
        d_oos = np.concatenate(list(r["d_oos"].values())) if "d_oos" in r else None
        s = scores(r["in"], y, np.concatenate(list(r["oos"].values())), th, amb, r.get("d_in"), d_oos, r.get("tau"))
        per = [scores(r["in"], y, v, th, amb, r.get("d_in"), r["d_oos"][k] if "d_oos" in r else None,
                      r.get("tau"))["oos_recall"] for k, v in r["oos"].items()]
        if candor is None and "temp" in r:
            candor = s  # the default as served
        cells = [f"{s['acc']:.4f}", f"{s['acc_fb']:.4f}", f"{s['oos_recall']:.4f}", *(f"{x:.4f}" for x in per),
                 f"{s['auroc']:.4f}", "-" if s["distance_auroc"] is None else f"{s['distance_auroc']:.4f}",
                 f"{r['tau']:.3f}" if "tau" in r else "-"]
        if free:  # in-scope questions worded unlike the templates: what the fallback rules cost there
            cells += free_cells(r["free"], th, r.get("d_free"), r.get("tau"))
        cells += [f"{r['temp']:.3f}" if "temp" in r else "-",
                 "-" if r["secs"] is None else f"{r['secs']:.0f}"]
        print(f"| {r['name']} | " + " | ".join(cells) + " |")
    base_in, base_oos = rows[0]["in"], np.concatenate(list(rows[0]["oos"].values()))
    t = matched_threshold(base_in, y, candor["acc_fb"], amb)
    s = scores(base_in, y, base_oos, t, amb)
    print(f"| TF-IDF + LR at threshold {t:.3f} (in-scope acc with fallback matched to Candor's) | {s['acc']:.4f} | "
          f"{s['acc_fb']:.4f} | {s['oos_recall']:.4f} | "
          + " | ".join(f"{scores(base_in, y, v, t, amb)['oos_recall']:.4f}" for v in rows[0]["oos"].values())
          + f" | {s['auroc']:.4f} | - | - | " + "".join(f"{c} | " for c in (free_cells(rows[0]["free"], t) if free else []))
          + "- | - |")
    print(f"\nCandor (default): OOS recall {candor['oos_recall']:.4f} (target ≥ 0.80); in-scope accuracy with fallback "
          f"{candor['acc_fb']:.4f} vs {candor['acc']:.4f} without ({100 * (candor['acc'] - candor['acc_fb']):.2f} "
          f"points, target ≤ 1); baseline OOS recall at the same in-scope accuracy {s['oos_recall']:.4f}")


if __name__ == "__main__":
    main()
