"""Privacy–utility: intent accuracy without DP and at ε = 1, 3, 8, for the demo bot and BANKING77.

Each bot is trained once without DP (Candor's default recipe) and once per ε with what `candor train --dp` does
with no other flags (`safety/privacy.py`: public pre-training, then the noisy prototypes; the flags below change
it), same model size, and tested on its held-out test set (demo: the bot file's in-scope test utterances;
BANKING77: the official test split). Each DP row carries the accuracy the trainer expected before training (its
public stand-in estimate). Prints a table, writes benchmarks/out/dp_utility.{json,png}.

    python benchmarks/dp_utility.py                                  # both bots, ε = 1 3 8, the --dp defaults
    python benchmarks/dp_utility.py --bots demo --epsilons 8 --dp-epochs 10
    python benchmarks/dp_utility.py --bots demo --epsilons 8 --dp-lora-rank 8 --dp-lr 1e-2
    python benchmarks/dp_utility.py --bots demo --dp-base benchmarks/out/banking77 --dp-blocks 0
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import time
from pathlib import Path

import torch

from bot.classify import predict_proba
from bot.importers import from_banking77
from bot.model import read_card
from bot.spec import OUT_OF_SCOPE, demo_bot_path, load_bot
from bot.train import Trainer
from safety.guard import served_text
from safety.privacy import STANDIN

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BITEXT = SHARED / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"


def load(name: str, args):
    """(spec, test texts, test intents, public corpus for DP pre-training)."""
    if name == "demo":
        spec, _ = load_bot(demo_bot_path())
        test = [e for e in spec.test if e.intent != OUT_OF_SCOPE]
        return spec, [e.text for e in test], [e.intent for e in test], ""  # bundled BANKING77 text is public
    import csv
    spec = from_banking77(SHARED / "banking77")
    with open(SHARED / "banking77" / "test.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    spec.test = []
    spec.model.max_length = 128
    spec.training.epochs, spec.training.pretrain_epochs = args.banking_epochs, 1
    # BANKING77 is the private data here, so its public corpus is another one: the Bitext utterances
    return spec, [r["text"].strip() for r in rows], [r["category"] for r in rows], str(BITEXT)


@functools.lru_cache(maxsize=None)
def served(text: str) -> str:
    """A text as the served bot reads it (normalised, PII redacted), as `candor train` trains on it; cached, as
    every run of one invocation reads the same records."""
    return served_text(text)


def accuracy(trainer, texts, intents) -> float:
    """On the test texts as the served bot reads them, as training saw them."""
    probs = predict_proba(trainer.model, trainer.enc, [served(t) for t in texts])
    pred = [trainer.model.intents[i] for i in probs.argmax(1).tolist()]
    return sum(p == t for p, t in zip(pred, intents)) / len(intents)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bots", nargs="+", default=["demo", "banking77"], choices=["demo", "banking77"])
    p.add_argument("--epsilons", nargs="+", type=float, default=[1, 3, 8])
    p.add_argument("--dp-epochs", type=int, default=None, help="privacy.epochs: DP-SGD epochs after the prototypes "
                                                                "(default: the bot's, 0)")
    p.add_argument("--dp-ngram-share", type=float, default=None, help="privacy.ngram_share (default: the bot's)")
    p.add_argument("--dp-reply-weight", type=float, default=None,
                   help="reply loss weight under DP (0: intent head only, ~5x cheaper per step on CPU)")
    p.add_argument("--dp-lora-rank", type=int, default=0, help="train LoRA adapters of this rank under DP (0: off)")
    p.add_argument("--dp-base", default=None, metavar="DIR",
                   help="start DP fine-tuning from this model trained on public data only (e.g. the BANKING77 "
                        "model benchmarks/intent_accuracy.py writes), instead of the offline default")
    p.add_argument("--dp-blocks", type=int, default=None, help="privacy.train_blocks under DP (0: heads only)")
    p.add_argument("--dp-head-init", choices=["random", "prototype"], default=None,
                   help="privacy.head_init: prototype starts the intent head from noisy per-intent prototypes")
    p.add_argument("--dp-prototype-share", type=float, default=None, help="privacy.prototype_share (default: the bot's)")
    p.add_argument("--dp-lr", type=float, default=None, help="DP fine-tuning learning rate (default: the bot's)")
    p.add_argument("--banking-epochs", type=int, default=6, help="non-private BANKING77 epochs (default 6)")
    p.add_argument("--plain-model", nargs="*", default=[], metavar="BOT=DIR",
                   help="reuse an already trained non-private model, e.g. demo=models/support_demo")
    p.add_argument("--replot", nargs="+", metavar="JSON", help="train nothing: plot these runs' results into --out")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/dp_utility"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        rows = [json.loads(Path(f).read_text()) for f in args.replot]
        first = {r["bot"] for r in rows[0]}  # a later file's non-private row only for a bot the first lacks
        plot(rows[0] + [r for more in rows[1:] for r in more if r["dp"] or r["bot"] not in first],
             args.out / "dp_utility.png")
        print(f"wrote {args.out / 'dp_utility.png'}")
        return

    results = []
    for name in args.bots:
        spec, texts, intents, public = load(name, args)
        spec.training.checkpoint_every = 0
        t0 = time.time()
        reuse = dict(m.split("=", 1) for m in args.plain_model).get(name)
        if reuse:
            from bot.data import Encoder
            from bot.model import load as load_model
            model, tok = load_model(reuse)
            trainer = argparse.Namespace(model=model, enc=Encoder(tok, spec.model.max_length))
            card = read_card(reuse)["training"]
            epochs, seconds = card["epochs_run"], card["seconds"]
        else:
            trainer = Trainer(spec, args.out / f"{name}-plain", device=args.device, progress=True, read=served)
            trainer.run()
            epochs, seconds = len(trainer.state.history), time.time() - t0
        base = accuracy(trainer, texts, intents)
        results.append(dict(bot=name, dp=False, target_epsilon=None, epsilon=None, delta=None, accuracy=base,
                            seconds=seconds, epochs=epochs))
        print(f"{name} without DP: accuracy {base:.4f}", flush=True)
        for eps in args.epsilons:
            dp_spec = copy.deepcopy(spec)
            dp_spec.privacy.enabled, dp_spec.privacy.target_epsilon = True, eps
            dp_spec.privacy.public_corpus = public
            for field, value in (("epochs", args.dp_epochs), ("head_init", args.dp_head_init),
                                 ("prototype_share", args.dp_prototype_share), ("ngram_share", args.dp_ngram_share)):
                if value is not None:
                    setattr(dp_spec.privacy, field, value)
            if name != "demo":  # the estimate's stand-in must not be the private data itself
                dp_spec.privacy.standin = [public, str(STANDIN[1])]
            if args.dp_reply_weight is not None:
                dp_spec.training.reply_weight = args.dp_reply_weight
            if args.dp_lr:
                dp_spec.training.learning_rate = args.dp_lr
            dp_spec.privacy.lora_rank = args.dp_lora_rank
            if args.dp_blocks is not None:
                dp_spec.privacy.train_blocks = args.dp_blocks
            if args.dp_base:
                dp_spec.model.base = args.dp_base
            t0 = time.time()
            trainer = Trainer(dp_spec, args.out / f"{name}-eps{eps:g}", device=args.device, progress=True,
                                read=served)
            trainer.run()
            acc = accuracy(trainer, texts, intents)
            ledger = read_card(trainer.out_dir)["privacy"]
            p = dp_spec.privacy
            results.append(dict(bot=name, dp=True, target_epsilon=eps, epsilon=ledger["epsilon"],
                                delta=ledger["delta"], accuracy=acc, seconds=time.time() - t0,
                                epochs=p.epochs, noise_multiplier=ledger["noise_multiplier"],
                                ngram_share=p.ngram_share if "head_init" in ledger else None,
                                estimate=(ledger.get("estimate") or {}).get("accuracy"),
                                reply_weight=dp_spec.training.reply_weight, lora_rank=args.dp_lora_rank,
                                base=dp_spec.model.base, train_blocks=dp_spec.privacy.train_blocks,
                                learning_rate=dp_spec.training.learning_rate, head_init=p.head_init,
                                prototype_share=p.prototype_share if p.epochs else 1.0,
                                steps=ledger["steps"],
                                prototype_sigma=ledger["history"][0][0] if "head_init" in ledger else None))
            est = results[-1]["estimate"]
            print(f"{name} ε={eps:g}: accuracy {acc:.4f} (ε from the accountant {ledger['epsilon']:.2f}"
                  + (f"; expected before training {est:.4f}" if est is not None else "") + ")", flush=True)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" \
        else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nintent accuracy on held-out test sets; {platform.node()}, {device}")
    print("| bot | training | ε (accountant) | δ | accuracy | vs non-private (points) | expected before training | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        base = next(b["accuracy"] for b in results if b["bot"] == r["bot"] and not b["dp"])
        if r["dp"]:
            print(f"| {r['bot']} | DP-SGD, target ε {r['target_epsilon']:g}, {r['epochs']} epochs, "
                  f"base {r['base']}, "
                  f"{trained(r)}, lr {r['learning_rate']:g}, "
                  f"reply weight {r['reply_weight']:g}, "
                  + (f"prototype σ {r['prototype_sigma']:.2f}, " if r.get("prototype_sigma") else "")
                  + (f"σ {r['noise_multiplier']:.2f}" if r["epochs"] else "no DP-SGD") + f" | {r['epsilon']:.2f} | {r['delta']:.1e} | {r['accuracy']:.4f} | "
                  f"{100 * (r['accuracy'] - base):+.1f} | "
                  + (f"{r['estimate']:.4f}" if r.get("estimate") is not None else "–") + f" | {r['seconds'] / 60:.1f} |")
        else:
            print(f"| {r['bot']} | no DP, {r['epochs']} epochs | ∞ | – | {r['accuracy']:.4f} | 0 | – | {r['seconds'] / 60:.1f} |")
    (args.out / "dp_utility.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "dp_utility.png")
    print(f"\nwrote {args.out / 'dp_utility.json'} and {args.out / 'dp_utility.png'}")


def trained(r: dict) -> str:
    proto = r.get("head_init") == "prototype"
    share = f", n-gram share {r['ngram_share']:g}" if r.get("ngram_share") is not None else ""
    if proto and not r["epochs"]:
        return "prototype head only" + share
    if proto:
        return f"prototype head{share} ({r['prototype_share']:g} of ε), then " + trained({**r, "head_init": "random"})
    if r.get("lora_rank"):
        return f"LoRA r{r['lora_rank']}"
    blocks = r.get("train_blocks", -1)
    return "all weights" if blocks < 0 else "intent head + final norm" if blocks == 0 else f"top {blocks} blocks + heads"


def recipe(r: dict) -> str:
    base = r.get("base", "scratch")
    return f"{'public LM pre-training' if base == 'scratch' else 'base ' + Path(base).name}, {trained(r)}"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, bot in enumerate(dict.fromkeys(r["bot"] for r in results)):
        colour = f"C{i}"
        for j, how in enumerate(dict.fromkeys(recipe(r) for r in results if r["bot"] == bot and r["dp"])):
            dp = sorted((r for r in results if r["bot"] == bot and r["dp"] and recipe(r) == how), key=lambda r: r["epsilon"])
            ax.plot([r["epsilon"] for r in dp], [100 * r["accuracy"] for r in dp], "os^vD"[j % 5] + "-",
                    color=colour, alpha=1 - 0.25 * (j % 3), label=f"{bot}, DP: {how}")
        base = next(r["accuracy"] for r in results if r["bot"] == bot and not r["dp"])
        ax.axhline(100 * base, color=colour, ls="--", label=f"{bot}, no DP")
        ax.axhspan(100 * base - 3, 100 * base, color=colour, alpha=0.08)
    ax.set_xscale("log")
    ticks = sorted({r["target_epsilon"] for r in results if r["dp"]})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("ε (δ below 1/N)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Privacy–utility (shaded: within 3 points of no DP)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
