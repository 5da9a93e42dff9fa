"""Robustness: undefended vs augmentation vs adversarial training (and DP at ε = 8), attacked alike.

For each bot (the demo bot, BANKING77) and each defence, train a model with Candor's trainer (timed,
all in this one run, so the time ratios are side by side), then attack it with `safety.attack_report.run`
— the same code as `candor attack` — on the same N test messages (a seeded sample of the in-scope test
set; identical for every model of a bot) with each recipe, through the served input path. Clean
accuracy is also measured on the whole in-scope test set, and with random keyboard typos (no attacker)
on the same N messages. Prints one table; writes benchmarks/out/robustness/robustness.{json,png}.

    python benchmarks/robustness.py                                 # both bots, all defences, N = 200
    python benchmarks/robustness.py --bots demo --defences undefended adversarial -n 100

Defences:
  undefended      the bot's own training recipe
  augment         + TextAttack augmentation views (--augment, share --augment-share)
  adversarial     + adversarial training (--adversarial-recipe on --adversarial-share of the records each
                  epoch after --clean-epochs clean ones)
  adversarial-augment  both of the above
  dp              DP-SGD at ε = 8 (head + final norm, intent only; base: the BANKING77 model trained in this run,
                  public data only — trained first when needed — for the demo bot)
  dp-adversarial  dp + adversarial training as above
The DP defences run for the demo bot only: BANKING77 as the private data reaches 2.2% accuracy at
ε = 8 today (BENCHMARKS.md, DP sections), so attacking it would measure nothing.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from bot.importers import from_banking77
from bot.spec import OUT_OF_SCOPE, Example, demo_bot_path, load_bot
from bot.train import Trainer
from safety.attack_report import DEFAULT_RECIPES, run
from safety.guard import served_text
from ui.verbs.train import views

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFENCES = ["undefended", "augment", "adversarial", "adversarial-augment", "dp", "dp-adversarial"]


def load(name: str):
    if name == "demo":
        return load_bot(demo_bot_path())[0]
    spec = from_banking77(SHARED / "banking77")
    spec.model.max_length = 128
    spec.training.epochs, spec.training.pretrain_epochs, spec.training.patience = 6, 2, 3
    return spec


def configure(spec, defence: str, args, out: Path):
    spec = copy.deepcopy(spec)
    spec.training.checkpoint_every = 0
    r = spec.robustness
    spec.training.seed = args.seed
    if defence.endswith("augment"):
        r.augment, r.augment_share = args.augment.split(","), args.augment_share
    if "adversarial" in defence:
        r.adversarial, r.adversarial_recipe = True, args.adversarial_recipe
        r.adversarial_share, r.adversarial_clean_epochs = args.adversarial_share, args.clean_epochs
    if defence.startswith("dp"):
        p = spec.privacy
        p.enabled, p.target_epsilon, p.train_blocks = True, 8.0, 0
        spec.training.reply_weight, spec.training.epochs = 0.0, args.dp_epochs
        spec.training.learning_rate = args.dp_lr
        if spec.name != "banking77":  # BANKING77 is public: the demo bot's private training starts from it
            spec.model.base = str(out / "banking77-undefended")
        else:
            p.public_corpus = str(SHARED / "bitext_customer_support" /
                                  "Bitext_Sample_Customer_Support_Training_Dataset.csv")
    return spec


def train(spec, defence: str, out_dir: Path, device: str) -> float:
    t0 = time.time()
    trainer = Trainer(spec, out_dir, device=device, progress=True, views=views(spec), read=served_text)
    trainer.run()
    return time.time() - t0


def full_accuracy(model_dir: Path, test) -> float:
    """In-scope accuracy on the whole test set, read as served (what `candor eval` reports)."""
    from bot.dialogue import Bot
    from bot.evaluate import evaluate

    bot = Bot(model_dir)
    examples = [Example(served_text(e.text), e.intent) for e in test if e.intent != OUT_OF_SCOPE]
    return evaluate(bot.model, bot.enc, examples, bot.settings)["summary"]["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bots", nargs="+", default=["demo", "banking77"], choices=["demo", "banking77"])
    p.add_argument("--defences", nargs="+", default=DEFENCES, choices=DEFENCES)
    p.add_argument("-n", type=int, default=200, help="test messages attacked per model (default 200)")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    p.add_argument("--augment", default="charswap,typo,eda")
    p.add_argument("--augment-share", type=float, default=0.3)
    p.add_argument("--adversarial-recipe", default="deepwordbug")
    p.add_argument("--adversarial-share", type=float, default=0.25)
    p.add_argument("--clean-epochs", type=int, default=2)
    p.add_argument("--dp-epochs", type=int, default=10)
    p.add_argument("--dp-lr", type=float, default=3e-2)
    p.add_argument("--seed", type=int, default=0, help="training seed (data order, views, initialisation)")
    p.add_argument("--reuse", action="store_true", help="attack models already in --out instead of training them")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/robustness"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    recipes = args.recipes.split(",")
    results = []
    jobs = [(b, d) for b in args.bots for d in args.defences if not (b == "banking77" and d.startswith("dp"))]
    if any(b == "demo" and d.startswith("dp") for b, d in jobs) and (
            ("banking77", "undefended") in jobs or not (args.out / "banking77-undefended" / "model.safetensors").is_file()):
        jobs = [("banking77", "undefended")] + [j for j in jobs if j != ("banking77", "undefended")]  # the demo DP base
    for bot, defence in jobs:
        spec = load(bot)
        model_dir = args.out / f"{bot}-{defence}"
        spec = configure(spec, defence, args, args.out)
        if args.reuse and (model_dir / "model.safetensors").is_file():
            seconds = json.loads((model_dir / "candor.json").read_text())["training"]["seconds"]
        else:
            print(f"\n== {bot}: {defence} ==", flush=True)
            seconds = train(spec, defence, model_dir, args.device)
        report = run(model_dir, spec.test, recipes, args.n, source=f"{bot} test set")
        card = json.loads((model_dir / "candor.json").read_text())
        results.append({"bot": bot, "defence": defence, "train_seconds": round(seconds, 1),
                        "test_accuracy": full_accuracy(model_dir, spec.test),
                        "epsilon": (card.get("privacy") or {}).get("epsilon"),
                        "natural_noise": report["natural_noise"], "recipes": report["recipes"],
                        "views": card["training"].get("views", [])})
        (args.out / "robustness.json").write_text(json.dumps(results, indent=2))
        print(table(results, recipes), flush=True)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" \
        else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{platform.node()}, {device}; {args.n} attacked test messages per model; recipes {', '.join(recipes)}")
    print(table(results, recipes))
    plot(results, recipes, args.out / "robustness.png")
    print(f"\nwrote {args.out / 'robustness.json'} and {args.out / 'robustness.png'}")


def table(results: list[dict], recipes: list[str]) -> str:
    head = ("| bot | defence | train s | × undefended | test acc | typos acc | "
            + " | ".join(f"{r} success / acc under attack" for r in recipes) + " |")
    lines = [head, "|" + "---|" * (6 + len(recipes))]
    for r in results:
        base = next((b for b in results if b["bot"] == r["bot"] and b["defence"] == "undefended"), None)
        ratio = f"{r['train_seconds'] / base['train_seconds']:.2f}" if base else "–"
        eps = f" (ε {r['epsilon']:.2f})" if r.get("epsilon") else ""
        by = {x["recipe"]: x for x in r["recipes"]}
        cells = [f"{by[n]['attack_success_rate']:.1%} / {by[n]['accuracy_under_attack']:.1%}"
                 if n in by and by[n]["attack_success_rate"] is not None else "–" for n in recipes]
        nn = r["natural_noise"]
        lines.append(f"| {r['bot']} | {r['defence']}{eps} | {r['train_seconds']:.0f} | {ratio} | "
                     f"{r['test_accuracy']:.1%} | {nn['noisy_accuracy']:.1%} (clean {nn['clean_accuracy']:.1%}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], recipes: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bots = list(dict.fromkeys(r["bot"] for r in results))
    fig, axes = plt.subplots(1, len(bots), figsize=(6.5 * len(bots), 4.2), squeeze=False)
    for ax, bot in zip(axes[0], bots):
        rows = [r for r in results if r["bot"] == bot]
        width = 0.8 / len(rows)
        for k, r in enumerate(rows):
            by = {x["recipe"]: x for x in r["recipes"]}
            ys = [by[n]["attack_success_rate"] or 0 for n in recipes] + [
                1 - r["natural_noise"]["noisy_accuracy"] / max(r["natural_noise"]["clean_accuracy"], 1e-9)]
            xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(ys))]
            ax.bar(xs, [100 * y for y in ys], width=width, color=f"C{k}", label=r["defence"])
        ax.set_xticks(range(len(recipes) + 1), recipes + ["random typos\n(relative acc. loss)"])
        ax.set_ylabel("attack success rate (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{bot}: lower is more robust")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
