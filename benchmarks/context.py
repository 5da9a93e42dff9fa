"""Multi-turn intent: a classifier that reads the earlier user turn (`settings.classify_context: 1`, the default)
against the same bot reading each message alone (`classify_context: 0`, the behaviour before), trained from the
same bot file in one run, both tested on the demo bot's own held-out questions.

What is measured (every text read as served: PII redaction):
- single turn: the test questions alone (no conversation);
- follow-up: each test question, then a follow-up that states no intent (`HELD_OUT` below, written apart from the
  training templates in bot/followups.py; the issue's own example first). Right when the follow-up gets the
  question's intent and does not fall back;
- switch: each test question read after a question of another intent: right when it gets its own intent;
- out of scope after a question: BANKING77 and Schema-Guided-Dialogue questions the bot was never taught
  (as benchmarks/oos.py) read after an in-scope question: the share that falls back, against alone.
The model that reads each message alone is also read on the two texts joined by a space (a heuristic with no
training), so that the trained context is compared with the obvious shortcut.

    python benchmarks/context.py          # trains two demo models (~17 min on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oos import banking_oos, sgd_test_oos  # noqa: E402

from bot.dialogue import Bot, Conversation  # noqa: E402
from bot.spec import Turn, demo_bot_path, load_bot  # noqa: E402
from bot.train import train  # noqa: E402
from safety.guard import served_text  # noqa: E402

HELD_OUT = [
    "it's order 4432, placed yesterday", "the order was 88231", "I bought it on Friday", "it's under Maria Lopez",
    "you can email me at j.smith@example.com", "yes, please go ahead", "the red dress from last week",
    "order #5512", "that one, please", "it was placed three days ago", "no, I haven't",
    "my account email is anna@example.org", "the purchase from Tuesday", "number 77120",
    "I think it was around the 15th", "right, that's the one", "from my Mastercard", "it should go to Chicago",
    "please, as quickly as you can", "it's for my brother",
]


def rate(bot: Bot, pairs: list[tuple[str | None, str]], want: list[str | None], join: bool = False) -> float:
    """Share of (earlier, message) pairs decided as `want` (an intent, not falling back; None: falling back)."""
    if join:
        texts, convs = [f"{a} {b}" if a else b for a, b in pairs], None
    else:
        texts = [b for _, b in pairs]
        convs = [Conversation([Turn(a, "", None)] if a else []) for a, _ in pairs]
    decisions = bot.classify_batch(texts, convs)
    hits = [(d.fallback if w is None else (not d.fallback and d.intent == w)) for d, w in zip(decisions, want)]
    return sum(hits) / len(hits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/out/context")
    ap.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the bot file's)")
    ap.add_argument("--oos", type=int, default=300, help="out-of-scope questions from each source")
    args = ap.parse_args()
    spec, _ = load_bot(demo_bot_path())
    if args.epochs:
        spec.training.epochs = args.epochs
    rng = random.Random(0)
    tests = [(served_text(e.text), e.intent) for e in spec.test if e.intent in spec.intents]
    follow = [(q, served_text(HELD_OUT[k % len(HELD_OUT)])) for k, (q, _) in enumerate(tests)]
    others = [rng.choice([t for t in tests if t[1] != y]) for _, y in tests]
    switch = [(o[0], q) for o, (q, _) in zip(others, tests)]
    oos = [served_text(t) for t in banking_oos(args.oos, 0) + sgd_test_oos(args.oos, 0)]
    before = [tests[k % len(tests)][0] for k in range(len(oos))]
    rows = []
    for reads in (1, 0):
        out = Path(args.out) / f"reads_{reads}"
        s = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, classify_context=reads))
        if not (out / "model.safetensors").is_file():  # kept from an earlier run of the same code otherwise
            train(s, out, read=served_text)
        bot = Bot(out)
        seconds = bot.card["training"]["seconds"]
        for join in ((False, True) if not reads else (False,)):
            name = ("reads the earlier turn (trained)" if reads else
                    "each message alone" + (", earlier turn joined to it" if join else ""))
            rows.append([name,
                         rate(bot, [(None, q) for q, _ in tests], [y for _, y in tests]),
                         rate(bot, follow, [y for _, y in tests], join),
                         rate(bot, [(None, f) for _, f in follow], [None] * len(follow)),
                         rate(bot, switch, [y for _, y in tests], join),
                         rate(bot, [(None, t) for t in oos], [None] * len(oos)),
                         rate(bot, list(zip(before, oos)), [None] * len(oos), join),
                         f"{seconds:.0f}" if not join else "-"])
    print(f"\n{platform.node()} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
          f"{len(tests)} test questions, {len(HELD_OUT)} held-out follow-ups, {len(oos)} out-of-scope questions\n")
    print("| classifier | single turn: accuracy | follow-up: gets the question's intent | follow-up alone: falls back "
          "| switch: new request's intent | out of scope alone: falls back | out of scope after a question: falls back "
          "| training (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
