"""`candor attack`: attack the served bot with TextAttack recipes and report how well it holds.

Every recipe attacks the same messages: a seeded sample of the bot's in-scope test set, each read
through the served input path (`safety.attacks.ServedIntentModel`). Per recipe:

- clean accuracy: share of the attacked messages classified correctly before any attack;
- accuracy under attack: share still classified correctly after the attack (the attack failed);
- attack success rate: of the messages classified correctly, the share the attack flipped;
- words perturbed: mean share of a message's words changed, over successful attacks;
- queries: mean model queries per message, over messages it attacked (not skipped);
- wrong, no fallback: of the successful attacks, the share the served bot would answer with the
  wrong intent instead of falling back (its confidence and ambiguity thresholds, and its distance rule).

These are TextAttack's own definitions (`textattack.metrics`); a test checks the two agree.
Natural noise beside them: accuracy on the same messages with random keyboard typos, no attacker.
Files: `attack_report.json`, `attack_examples.csv` (the successful adversarial examples) and
`attack_report.png` in `MODEL/reports/`; the report also goes into the model card. Texts in them
are as the served bot read them: PII redacted, like the audit log.
"""
from __future__ import annotations

import csv
import io
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bot import card as cards
from bot.classify import decide
from bot.io import atomic_write_json, atomic_write_text
from bot.model import model_version
from bot.spec import OUT_OF_SCOPE, Example, Settings
from safety.recipes import RECIPES, check

JSON, CSV, PNG = "attack_report.json", "attack_examples.csv", "attack_report.png"
DEFAULT_RECIPES = ["deepwordbug", "pruthi", "pwws"]
NOISE = "typo"  # the augmenter that makes the natural-noise row (safety/augment.py)


@dataclass
class Outcome:
    """One attacked message."""

    recipe: str
    text: str  # as the served bot read it (normalised, PII redacted)
    intent: str  # the true intent
    status: str  # "successful", "failed" or "skipped" (misclassified before any attack)
    perturbed: str  # the adversarial example as read ("" unless successful)
    predicted: str  # the intent decided for `perturbed` (successful) or for `text`
    confidence: float
    fallback: bool  # the served bot would fall back on `perturbed` / `text`
    words: int  # words in `text` (TextAttack's word split)
    words_changed: int
    queries: int


def select(test: list[Example], intents: list[str], n: int, seed: int = 0) -> list[Example]:
    """A seeded sample of `n` in-scope test examples, in test-set order (all of them if fewer)."""
    pool = [e for e in test if e.intent != OUT_OF_SCOPE and e.intent in intents]
    if n >= len(pool):
        return pool
    keep = set(random.Random(seed).sample(range(len(pool)), n))
    return [e for i, e in enumerate(pool) if i in keep]


def outcome(recipe: str, example: Example, result, wrapper, settings: Settings) -> Outcome:
    """One attacked message; its texts as the served bot read them (PII redacted), never the raw ones."""
    from safety.attacks import status

    st = status(result)
    final = result.perturbed_result if st == "successful" else result.original_result
    d = wrapper.decision(final.attacked_text.text, settings) or decide(  # refused: uniform probabilities
        torch.as_tensor(final.raw_output).float().cpu(), wrapper.intents, settings)
    original, perturbed = result.original_result.attacked_text, result.perturbed_result.attacked_text
    return Outcome(recipe, wrapper.served_text(example.text), example.intent, st,
                   wrapper.served_text(perturbed.text) or "" if st == "successful" else "",
                   d.intent, round(d.confidence, 4), d.fallback, len(original.words),
                   len(original.all_words_diff(perturbed)) if st == "successful" else 0,
                   0 if st == "skipped" else int(result.num_queries))


def summarise(outcomes: list[Outcome]) -> dict:
    """The per-recipe numbers (see the module docstring) from its outcomes."""
    n = len(outcomes)
    ok = [o for o in outcomes if o.status == "successful"]
    failed = sum(o.status == "failed" for o in outcomes)
    attacked = [o for o in outcomes if o.status != "skipped"]
    ratio = (lambda a, b: round(a / b, 4) if b else None)
    return {
        "attacked": n, "successful": len(ok), "failed": failed, "skipped": n - len(attacked),
        "clean_accuracy": ratio(len(attacked), n),
        "accuracy_under_attack": ratio(failed, n),
        "attack_success_rate": ratio(len(ok), len(attacked)),
        "words_perturbed": ratio(sum(o.words_changed / max(o.words, 1) for o in ok), len(ok)),
        "queries": ratio(sum(o.queries for o in attacked), len(attacked)),
        "wrong_without_fallback": ratio(sum(not o.fallback for o in ok), len(ok)),
    }


def natural_noise(wrapper, examples: list[Example], seed: int = 0) -> dict:
    """Accuracy on `examples` as they are and with random keyboard typos (no attacker)."""
    from safety.augment import make

    typo = make(NOISE)
    noisy = [typo(e.text, seed + k) or e.text for k, e in enumerate(examples)]
    y = [wrapper.intents.index(e.intent) for e in examples]
    clean = wrapper([e.text for e in examples]).argmax(1)
    dirty = wrapper(noisy).argmax(1)
    return {"augmenter": NOISE, "description": typo.description, "examples": len(examples),
            "clean_accuracy": round(float((clean == y).mean()), 4) if examples else None,
            "noisy_accuracy": round(float((dirty == y).mean()), 4) if examples else None}


def run(model_dir: str | Path, test: list[Example], recipes: list[str] = DEFAULT_RECIPES, n: int = 200,
        time_budget: float | None = None, query_budget: int | None = None, seed: int = 0, progress: bool = True,
        log=print, source: str = "") -> dict:
    """Attack, write the report files and the model card section; returns the report.

    `time_budget` (seconds) counts from here; each recipe gets an equal share of what is left, and a
    message still being attacked when its share runs out is dropped (the wrapper stops answering).
    Ctrl-C stops the same way; either way the report says what was attacked."""
    check(recipes)  # before loading anything: unknown or unavailable recipes fail at once
    from bot.dialogue import Bot
    from safety.attacks import OutOfTime, ServedIntentModel, attack_one, build

    started = time.monotonic()
    model_dir = Path(model_dir)
    bot = Bot(model_dir)
    wrapper = ServedIntentModel(bot.model, bot.enc, neighbours=bot.neighbours)
    candidates = select(test, bot.model.intents, len(test), seed)
    served = [e for e in candidates if wrapper.served_text(e.text) is not None]
    examples = select(served, bot.model.intents, n, seed)
    if not examples:
        raise ValueError(f"{source or 'the test set'} has no in-scope test examples (intents of this model) to attack")
    if len(served) < len(candidates):
        log(f"left out {len(candidates) - len(served)} test message(s) the served bot refuses (empty or too long)")
    report = {"model_version": model_version(model_dir, bot.card),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "test_source": source,
              "requested": n, "seed": seed, "query_budget": query_budget, "time_budget": time_budget,
              "input_path": "as served: Unicode normalisation, length cap, PII redaction, spelling correction, then the intent head",
              "natural_noise": None, "recipes": []}
    outcomes: list[Outcome] = []
    stop = None
    try:
        report["natural_noise"] = natural_noise(wrapper, examples, seed)
    except KeyboardInterrupt:
        stop = "interrupted"
    for k, name in enumerate(recipes):
        mine: list[Outcome] = []
        t0, why = time.monotonic(), stop
        if why is None:
            wrapper.deadline = None if time_budget is None else t0 + (time_budget - (t0 - started)) / (len(recipes) - k)
            bar = tqdm(examples, desc=f"{name}", disable=not progress, unit="msg")
            try:
                attack = build(name, wrapper, query_budget)
                for j, ex in enumerate(bar):
                    result = attack_one(attack, ex.text, bot.model.intents.index(ex.intent), seed * 100_003 + j)
                    mine.append(outcome(name, ex, result, wrapper, bot.settings))
                    s = summarise(mine)
                    bar.set_postfix(success=f"{s['attack_success_rate'] or 0:.0%}", refresh=False)
            except OutOfTime:
                why = "time budget"
            except KeyboardInterrupt:
                why = stop = "interrupted"
            finally:
                bar.close()
                wrapper.deadline = None
        report["recipes"].append({"recipe": name, "perturbs": RECIPES[name].perturbs, "requested": len(examples),
                                  "stopped": why, "seconds": round(time.monotonic() - t0, 1), **summarise(mine)})
        outcomes += mine
        if why:
            log(f"{name}: stopped ({why}) after {len(mine)} of {len(examples)} messages")
    write(report, outcomes, model_dir / "reports")
    cards.update(model_dir, robustness=report)
    return report


def write(report: dict, outcomes: list[Outcome], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / JSON, {**report, "outcomes": [asdict(o) for o in outcomes]})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["recipe", "original", "perturbed", "true_intent", "predicted_intent", "confidence", "fallback"])
    for o in outcomes:
        if o.status == "successful":
            w.writerow([o.recipe, o.text, o.perturbed, o.intent, o.predicted, o.confidence, o.fallback])
    atomic_write_text(out / CSV, buf.getvalue())
    plot(report, out / PNG)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r["recipe"], r["clean_accuracy"] or 0, r["accuracy_under_attack"] or 0) for r in report["recipes"]]
    nn = report.get("natural_noise") or {}
    if nn.get("examples"):
        rows.append(("random typos\n(no attacker)", nn["clean_accuracy"], nn["noisy_accuracy"]))
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.7 * len(rows)))
    ys = range(len(rows))  # the y axis is inverted below: y - 0.2 is drawn above y + 0.2
    ax.barh([y - 0.2 for y in ys], [r[1] for r in rows], height=0.4, color="#4c72b0", label="clean")
    ax.barh([y + 0.2 for y in ys], [r[2] for r in rows], height=0.4, color="#dd8452",
            label="under attack (or with random typos)")
    for y, (_, a, b) in zip(ys, rows):
        ax.text(a + 0.01, y - 0.2, f"{a:.0%}", va="center", fontsize=8)
        ax.text(b + 0.01, y + 0.2, f"{b:.0%}", va="center", fontsize=8)
    ax.set_yticks(list(ys), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("intent accuracy on the same test messages")
    ax.set_title(f"Robustness of {report['model_version']}", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
