"""`candor attack [MODEL] --recipe deepwordbug,pruthi,pwws -n 200` and `candor attack --list`."""
from __future__ import annotations

import sys
from pathlib import Path

from bot.card import robustness_table
from bot.model import read_card
from bot.spec import load_bot
from safety.recipes import UnavailableRecipe, check, table
from ui.verbs.evaluate import bot_file_for


def add_arguments(p) -> None:
    from ui.verbs import add_model

    add_model(p)
    p.add_argument("--recipe", default="deepwordbug,pruthi,pwws",
                   help="comma-separated recipes (default deepwordbug,pruthi,pwws; see --list)")
    p.add_argument("-n", type=int, default=200, help="test messages to attack (default 200; the same for every recipe)")
    p.add_argument("--time-budget", type=float, help="seconds for the whole run, shared by the recipes; stops cleanly "
                                                     "and reports what was attacked")
    p.add_argument("--query-budget", type=int, help="model queries per message at most (default: the recipe's own)")
    p.add_argument("--bot", help="bot YAML whose 'test:' section to attack (default: the one it was trained from)")
    p.add_argument("--seed", type=int, default=0, help="which test messages, and the recipes' random choices")
    p.add_argument("--list", action="store_true", help="list TextAttack's recipes: which run offline, and why not")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    return attack(args)


def test_set(model: str | Path, given: str | None):
    """The test examples to attack: from `given`, else the bot file the model was trained from."""
    card = read_card(model)
    if not card:
        raise FileNotFoundError(f"{model}: no candor.json here; is this a Candor model directory?")
    source = bot_file_for(card, given)
    return load_bot(source)[0].test, str(source)


def attack_report(model: str | Path, recipes: list[str], n: int, time_budget: float | None = None,
                  query_budget: int | None = None, bot: str | None = None, seed: int = 0,
                  progress: bool = True) -> dict:
    """Run the attacks, print the table and where the files went (used by `candor train --attack-report` too)."""
    from safety.attack_report import CSV, JSON, PNG, run

    test, source = test_set(model, bot)
    print(f"attacking {model} with {', '.join(recipes)} on up to {n} test messages of {source} "
          f"(through the served input path)" + (f", time budget {time_budget:.0f} s" if time_budget else ""))
    report = run(model, test, recipes, n, time_budget=time_budget, query_budget=query_budget, seed=seed,
                 progress=progress, source=source)
    print(robustness_table(report))
    out = Path(model) / "reports"
    print(f"  wrote {out / JSON}, {out / CSV} (successful adversarial examples), {out / PNG}; "
          "the model card's Robustness section now shows this table")
    return report


def attack(args) -> int:
    if args.list:
        print(table())
        return 0
    recipes = [r.strip() for r in args.recipe.split(",") if r.strip()]
    try:
        check(recipes)
    except UnavailableRecipe as e:
        print(f"candor attack: {e}. `candor attack --list` shows every recipe and why.", file=sys.stderr)
        return 2
    if args.n < 1:
        print("candor attack: -n must be at least 1", file=sys.stderr)
        return 2
    try:
        report = attack_report(args.model, recipes, args.n, args.time_budget, args.query_budget, args.bot, args.seed,
                               progress=not args.quiet)
    except ValueError as e:  # e.g. a bot file without in-scope test examples
        print(f"candor attack: {e}", file=sys.stderr)
        return 1
    return 130 if any(r["stopped"] == "interrupted" for r in report["recipes"]) else 0
