"""Are the attributions faithful? ERASER's comprehensiveness and sufficiency, as AOPC over
1/5/10/20/50% of the words, for the attributed top words and for random words.

comprehensiveness(k) = p(x) − p(x without its top-k% words)   (high: those words mattered)
sufficiency(k)       = p(x) − p(only its top-k% words)          (low: those words were enough)
Words are removed from the text itself, which is re-tokenised and re-classified.
"""
from __future__ import annotations

import random

import torch

from bot.classify import predict_proba

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)


def _count(n_words: int, fraction: float) -> int:
    return max(1, round(n_words * fraction))


def _join(words: list[str]) -> str:
    return " ".join(words)


def scores_for(model, enc, explanations, ranker, bins=BINS) -> dict:
    """Mean comprehensiveness/sufficiency per bin and their AOPC, for words ranked by `ranker(e)`."""
    comp = {b: [] for b in bins}
    suff = {b: [] for b in bins}
    texts, index = [], []
    for n, e in enumerate(explanations):
        order = ranker(e)
        words = [w.word for w in e.words]
        for b in bins:
            keep = set(order[:_count(len(words), b)])
            texts.append(_join([w for i, w in enumerate(words) if i not in keep]))
            texts.append(_join([w for i, w in enumerate(words) if i in keep]))
            index.append((n, b))
    probs = predict_proba(model, enc, texts) if texts else torch.zeros(0)
    for k, (n, b) in enumerate(index):
        e = explanations[n]
        target = model.intents.index(e.intent)
        comp[b].append(e.confidence - float(probs[2 * k, target]))
        suff[b].append(e.confidence - float(probs[2 * k + 1, target]))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {
        "comprehensiveness": {b: mean(comp[b]) for b in bins},
        "sufficiency": {b: mean(suff[b]) for b in bins},
        "comprehensiveness_aopc": mean([mean(comp[b]) for b in bins]),
        "sufficiency_aopc": mean([mean(suff[b]) for b in bins]),
    }


def evaluate(model, enc, explanations, seed: int = 0, random_repeats: int = 5, bins=BINS) -> dict:
    """Attributed words vs random words (averaged over `random_repeats` draws) on the same texts."""
    ours = scores_for(model, enc, explanations, lambda e: e.top_words(len(e.words)), bins)
    rng = random.Random(seed)
    draws = [scores_for(model, enc, explanations, lambda e: rng.sample(range(len(e.words)), len(e.words)), bins)
             for _ in range(random_repeats)]
    rand = {
        key: ({b: sum(d[key][b] for d in draws) / len(draws) for b in bins} if isinstance(ours[key], dict)
              else sum(d[key] for d in draws) / len(draws))
        for key in ours
    }
    return {"attributed": ours, "random": rand, "texts": len(explanations), "bins": list(bins)}


def table(result: dict) -> str:
    """Markdown table: one row per word selection, comprehensiveness per bin, then both AOPCs."""
    bins = result["bins"]
    head = "| words removed | " + " | ".join(f"comp@{int(b * 100)}%" for b in bins) + " | comp AOPC | suff AOPC |"
    lines = [head, "|" + "---|" * (len(bins) + 3)]
    for name in ("attributed", "random"):
        r = result[name]
        lines.append(f"| {name} | " + " | ".join(f"{r['comprehensiveness'][b]:.3f}" for b in bins)
                     + f" | {r['comprehensiveness_aopc']:.3f} | {r['sufficiency_aopc']:.3f} |")
    a, r = result["attributed"], result["random"]
    ratio = a["comprehensiveness"][0.2] / r["comprehensiveness"][0.2] if r["comprehensiveness"][0.2] > 0 else float("inf")
    lines.append(f"\n{result['texts']} texts; comprehensiveness of the top 20% of words is {ratio:.1f}x that of random words.")
    return "\n".join(lines)
