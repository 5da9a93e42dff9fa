"""Rasa-style evaluation reports: intent_report.json, intent_errors.json, confusion matrix and
confidence histogram PNGs, and the calibration and out-of-scope measures: expected calibration error
with a reliability diagram, and, for test examples labelled `out_of_scope`, how often the bot
correctly falls back (OOS recall), how well its confidence separates them from in-scope questions
(AUROC) with a histogram, and the confidence threshold that would catch a target share of them."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score  # noqa: E402

from bot.classify import decide_each, predict  # noqa: E402
from bot.io import atomic_dir, atomic_write_json  # noqa: E402
from bot.spec import OUT_OF_SCOPE, Example, Settings  # noqa: E402

FILES = ("intent_report.json", "intent_errors.json", "intent_confusion_matrix.png", "intent_histogram.png",
         "intent_reliability.png")
OOS_FILE = "oos_histogram.png"  # only when the test set has out-of-scope questions
ECE_BINS = 15
FEW_OOS = 50  # below this many out-of-scope test questions a suggested threshold is a rough guide
REPLY_BATCH = 32


def reliability_bins(confidence, correct, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, accuracy, mean confidence) per equal-width confidence bin; NaN for an empty bin."""
    conf, ok = np.asarray(confidence, float), np.asarray(correct, float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.array([(which == b).sum() for b in range(bins)])
    acc = np.array([ok[which == b].mean() if n else np.nan for b, n in enumerate(count)])
    mean = np.array([conf[which == b].mean() if n else np.nan for b, n in enumerate(count)])
    return count, acc, mean


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al., 2017): over equal-width confidence bins, the share-weighted |accuracy − confidence|."""
    count, acc, mean = reliability_bins(confidence, correct, bins)
    if not count.sum():
        return 0.0
    full = count > 0
    return float((count[full] / count.sum() * np.abs(acc[full] - mean[full])).sum())


def threshold_for_recall(oos_top, oos_anyway, target: float) -> float | None:
    """The lowest confidence threshold (4 decimals) at which at least `target` of the out-of-scope questions fall
    back, given each one's top probability and whether it falls back anyway (ambiguous, unfamiliar); None without
    any."""
    top, amb = np.asarray(oos_top, float), np.asarray(oos_anyway, bool)
    if not len(top):
        return None
    need = int(np.ceil(target * len(top) - 1e-9)) - int(amb.sum())
    if need <= 0:
        return 0.0
    kth = np.sort(top[~amb])[need - 1]  # fall back below the threshold: it must lie above this one
    return float(min(1.0, np.floor(kth * 1e4 + 1) / 1e4))


def falls_back_anyway(d) -> bool:
    """Whether decision `d` falls back whatever the confidence threshold (ambiguous or unfamiliar: the rule of
    `Decision.fallback_reason_at` with no threshold; `decide` names only one reason, so a low-confidence decision
    may be one of these too)."""
    return d.fallback_reason_at(0.0) is not None


def other_rules(summary: dict) -> str:
    """'… alone give(s)': the fallback rules that need no confidence threshold, in words, for an evaluation summary."""
    return ("the ambiguity and distance rules alone give" if "distance_threshold" in summary
            else "the ambiguity rule alone gives")


def oos_measures(in_top, oos_top, oos_fallback) -> dict:
    """Out-of-scope recall and AUROC (out-of-scope as the positive class, scored by 1 − confidence)."""
    if not len(oos_top):
        return {"oos_examples": 0, "oos_recall": None, "auroc": None}
    labels = [0] * len(in_top) + [1] * len(oos_top)
    auroc = float(roc_auc_score(labels, -np.asarray(list(in_top) + list(oos_top), float))) if len(in_top) else None
    return {"oos_examples": len(oos_top), "oos_recall": float(np.mean(oos_fallback)), "auroc": auroc}


def evaluate(model, enc, examples: list[Example], settings: Settings, target_oos_recall: float = 0.8,
             neighbours=None) -> dict:
    """Predictions and metrics for `examples`, each read alone; `out_of_scope` examples count only toward the OOS
    measures. `neighbours`: the model's distance-rule index (bot/neighbours.py), if it has one."""
    probs, dist = predict(model, enc, [e.text for e in examples], neighbours)
    decisions = decide_each(probs, model.intents, settings, dist, neighbours)
    in_scope = [(e, d) for e, d in zip(examples, decisions) if e.intent != OUT_OF_SCOPE]
    oos = [d for e, d in zip(examples, decisions) if e.intent == OUT_OF_SCOPE]
    y_true = [e.intent for e, _ in in_scope]
    y_pred = [d.intent for _, d in in_scope]
    labels = sorted(set(y_true) | set(y_pred))
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    confused: dict[str, Counter] = {}
    for t, p in zip(y_true, y_pred):
        if t != p:
            confused.setdefault(t, Counter())[p] += 1
    for name in labels:
        report[name]["confused_with"] = dict(confused.get(name, Counter()).most_common(5))
    errors = [{"text": e.text, "intent": e.intent,
               "intent_prediction": {"name": d.intent, "confidence": round(d.confidence, 4)}}
              for e, d in zip(examples, decisions)
              if (e.intent == OUT_OF_SCOPE and not d.fallback) or (e.intent != OUT_OF_SCOPE and d.intent != e.intent)]
    errors.sort(key=lambda r: -r["intent_prediction"]["confidence"])
    correct = [t == p for t, p in zip(y_true, y_pred)]
    summary = {
        "test_examples": len(examples),
        "accuracy": float(np.mean(correct)) if y_true else 0.0,  # the intent argmax, as if there were no fallback
        "accuracy_with_fallback": float(np.mean([c and not d.fallback for c, (_, d) in zip(correct, in_scope)]))
        if in_scope else 0.0,  # answered with the right intent
        "macro_f1": report["macro avg"]["f1-score"],
        "fallback_rate": float(np.mean([d.fallback for _, d in in_scope])) if in_scope else 0.0,
        "ece": expected_calibration_error([d.confidence for _, d in in_scope], correct),
        **oos_measures([d.confidence for _, d in in_scope], [d.confidence for d in oos], [d.fallback for d in oos]),
        **({"distance_threshold": round(neighbours.threshold, 4),
            "unfamiliar_rate": float(np.mean([d.fallback_reason_at(0.0) == "unfamiliar" for _, d in in_scope]))
            if in_scope else 0.0,
            "distance_auroc": float(roc_auc_score([0] * len(in_scope) + [1] * len(oos),
                                                  [d.distance for _, d in in_scope] + [d.distance for d in oos]))
            if in_scope and oos else None} if neighbours else {}),
        "confidence_threshold": settings.confidence_threshold,
        "ambiguity_threshold": settings.ambiguity_threshold,
        "temperature": round(model.temperature, 4),
    }
    if oos:
        t = threshold_for_recall([d.confidence for d in oos], [falls_back_anyway(d) for d in oos], target_oos_recall)
        at = [d.fallback_reason_at(t) is not None for d in oos]
        summary["suggested_threshold"] = {
            "target_oos_recall": target_oos_recall, "confidence_threshold": t, "oos_recall": float(np.mean(at)),
            "accuracy_with_fallback": float(np.mean([c and d.fallback_reason_at(t) is None
                                                     for c, (_, d) in zip(correct, in_scope)])) if in_scope else 0.0,
            "applied": False,
            **({"note": f"only {len(oos)} out-of-scope test questions: a rough guide"} if len(oos) < FEW_OOS else {}),
        }
    report["summary"] = summary
    return {"report": report, "errors": errors, "summary": summary, "labels": labels, "examples": examples,
            "decisions": decisions, "y_true": y_true, "y_pred": y_pred, "in_scope": in_scope}


def _confusion_png(result: dict, path: Path) -> None:
    labels = result["labels"]
    cm = confusion_matrix(result["y_true"], result["y_pred"], labels=labels)
    size = max(6, 0.28 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    ax.set_title(f"Intent confusion matrix (accuracy {result['summary']['accuracy']:.3f})")
    if len(labels) <= 40:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=6,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _histogram_png(result: dict, path: Path) -> None:
    right = [d.confidence for e, d in result["in_scope"] if d.intent == e.intent]
    wrong = [d.confidence for e, d in result["in_scope"] if d.intent != e.intent]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 21)
    ax.hist([right, wrong], bins=bins, label=[f"correct ({len(right)})", f"wrong ({len(wrong)})"],
            color=["#2a9d8f", "#e76f51"], stacked=True)
    ax.axvline(result["summary"]["confidence_threshold"], color="k", ls="--", label="fallback threshold")
    ax.set_xlabel("confidence of the predicted intent")
    ax.set_ylabel("test utterances")
    ax.set_title("Intent prediction confidence")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reliability_png(result: dict, path: Path) -> None:
    count, acc, _ = reliability_bins([d.confidence for _, d in result["in_scope"]],
                                     [d.intent == e.intent for e, d in result["in_scope"]])
    edges = np.linspace(0, 1, ECE_BINS + 1)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    mids = (edges[:-1] + edges[1:]) / 2
    ax.bar(mids, acc, width=1 / ECE_BINS, edgecolor="k", color="#2a9d8f", label="accuracy in the bin")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability of the intent confidence\n(expected calibration error {result['summary']['ece']:.3f}, "
                 f"temperature {result['summary']['temperature']:g})")
    ax.legend(loc="upper left")
    ax2.bar(mids, count, width=1 / ECE_BINS, edgecolor="k", color="#8d99ae")
    ax2.set_xlabel("confidence of the predicted intent")
    ax2.set_ylabel("test utterances")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _oos_png(result: dict, path: Path) -> None:
    """In scope against out of scope: the confidence, and (when the model has the distance rule) the distance."""
    s = result["summary"]
    inside = [d for _, d in result["in_scope"]]
    oos = [d for e, d in zip(result["examples"], result["decisions"]) if e.intent == OUT_OF_SCOPE]
    far = "distance_threshold" in s
    fig, axes = plt.subplots(1, 2 if far else 1, figsize=(12 if far else 7, 4), squeeze=False)
    ax = axes[0][0]
    bins = np.linspace(0, 1, 26)
    ax.hist([d.confidence for d in inside], bins=bins, alpha=0.6, density=True, color="#2a9d8f",
            label=f"in scope ({len(inside)})")
    ax.hist([d.confidence for d in oos], bins=bins, alpha=0.6, density=True, color="#e76f51",
            label=f"out of scope ({len(oos)})")
    ax.axvline(s["confidence_threshold"], color="k", ls="--", label=f"threshold {s['confidence_threshold']:g}")
    sug = s.get("suggested_threshold")
    if sug and sug["confidence_threshold"] and sug["confidence_threshold"] != s["confidence_threshold"]:
        ax.axvline(sug["confidence_threshold"], color="#6a4c93", ls=":",
                   label=f"suggested {sug['confidence_threshold']:g} (OOS recall {sug['target_oos_recall']:.0%})")
    ax.set_xlabel("confidence of the predicted intent (below the threshold: fallback)")
    ax.set_ylabel("density")
    ax.set_title(f"In scope vs out of scope: OOS recall {s['oos_recall']:.2f}"
                 + (f", AUROC {s['auroc']:.3f}" if s["auroc"] is not None else ""))
    ax.legend()
    if far:
        ax = axes[0][1]
        dist = [d.distance for d in inside + oos]
        bins = np.linspace(0, max(max(dist), s["distance_threshold"]) * 1.05, 31)
        ax.hist([d.distance for d in inside], bins=bins, alpha=0.6, density=True, color="#2a9d8f", label="in scope")
        ax.hist([d.distance for d in oos], bins=bins, alpha=0.6, density=True, color="#e76f51", label="out of scope")
        ax.axvline(s["distance_threshold"], color="k", ls="--", label=f"threshold {s['distance_threshold']:g}")
        ax.set_xlabel("distance to the nearest training examples (above the threshold: fallback)")
        ax.set_title("Distance rule" + (f": AUROC {s['distance_auroc']:.3f}" if s.get("distance_auroc") else ""))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(result: dict, out_dir: str | Path) -> Path:
    """Write the report files into `out_dir`. Each is made in full first, then moved in, so a failure leaves the
    previous reports; other files there (e.g. `candor attack`'s) are kept."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / ".eval-staging"
    with atomic_dir(staging) as tmp:
        atomic_write_json(tmp / FILES[0], result["report"])
        atomic_write_json(tmp / FILES[1], result["errors"])
        _confusion_png(result, tmp / FILES[2])
        _histogram_png(result, tmp / FILES[3])
        _reliability_png(result, tmp / FILES[4])
        if result["summary"]["oos_examples"]:
            _oos_png(result, tmp / OOS_FILE)
    for f in staging.iterdir():
        os.replace(f, out_dir / f.name)
    staging.rmdir()
    if not result["summary"]["oos_examples"]:
        (out_dir / OOS_FILE).unlink(missing_ok=True)  # from an earlier test set: no longer true
    return out_dir


def reply_measures(bot, examples: list[Example], limit: int = 200, seed: int = 0, progress: bool = True) -> dict:
    """Replies to test examples that carry a held-out reference (`reply:`), with the true intent (reply quality
    apart from classification), each way the bot can answer: `template` (one authored response at random),
    `grounded` (the authored response the model scores highest), `generated` (free generation) and `generate
    mode` (as served: generated, or grounded when the model's own score says the generation is poor). For each:
    mean ROUGE-L F1 against the reference (Lin, 2004; Google's rouge-score, Porter stemming) and mean
    repetition rate (share of repeated word 3-grams)."""
    import random

    from rouge_score import rouge_scorer
    from tqdm.auto import tqdm

    from bot.generate import fill, generate_replies, repetition, template_reply

    if limit < 0:
        raise ValueError(f"reply limit must be 0 (all) or above, got {limit}")
    items = [e for e in examples if e.reply and e.intent != OUT_OF_SCOPE][:limit or None]  # 0: all
    if not items:
        return {}
    prompts = [(e.text, e.intent, []) for e in items]
    refs = [fill(e.reply, bot.placeholders) for e in items]
    rng = random.Random(seed)
    ways = {"template": [template_reply(bot.responses.get(e.intent, []), bot.placeholders, rng) or bot.fallback_text
                         for e in items]}
    generated, grounded, served, sources = [], [], [], []
    bar = tqdm(total=len(items), desc="replies", disable=not progress)
    for k in range(0, len(items), REPLY_BATCH):
        part = prompts[k:k + REPLY_BATCH]
        for p, g in zip(part, generate_replies(bot.model, bot.enc, part, bot.settings.max_reply_tokens)):
            generated.append(fill(g, bot.placeholders))
            text, source, best = bot.choose(p, g)  # one scoring pass gives both the served and the grounded reply
            grounded.append(fill(best or bot.fallback_text, bot.placeholders))
            served.append(fill(text, bot.placeholders) if text else ways["template"][len(served)])
            sources.append(source)
            bar.update(1)
    bar.close()
    ways.update({"grounded": grounded, "generated": generated, "generate mode": served})
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out = {way: {"rouge_l": float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)])),
                 "repetition": float(np.mean([repetition(h) for h in hyps])),
                 "mean_words": float(np.mean([len(h.split()) for h in hyps]))}
           for way, hyps in ways.items()}
    out["generate mode"]["kept_generated"] = sources.count("generated") / len(sources)
    return {"examples": len(items), "ways": out,
            "samples": [{"text": e.text, "reference": r, **{w: ways[w][i] for w in ways}}
                        for i, (e, r) in enumerate(zip(items[:5], refs))]}
