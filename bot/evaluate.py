"""Rasa-style evaluation reports: intent_report.json, intent_errors.json, confusion matrix and
confidence histogram PNGs. Test examples labelled `out_of_scope` measure how often the bot
correctly falls back."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix  # noqa: E402

from bot.classify import decide, predict_proba  # noqa: E402
from bot.io import atomic_dir, atomic_write_json  # noqa: E402
from bot.spec import OUT_OF_SCOPE, Example, Settings  # noqa: E402

FILES = ("intent_report.json", "intent_errors.json", "intent_confusion_matrix.png", "intent_histogram.png")


def evaluate(model, enc, examples: list[Example], settings: Settings) -> dict:
    """Predictions and metrics for `examples`; `out_of_scope` examples count only toward OOS recall."""
    probs = predict_proba(model, enc, [e.text for e in examples])
    decisions = [decide(p, model.intents, settings) for p in probs]
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
    summary = {
        "test_examples": len(examples),
        "accuracy": float(np.mean([t == p for t, p in zip(y_true, y_pred)])) if y_true else 0.0,
        "macro_f1": report["macro avg"]["f1-score"],
        "fallback_rate": float(np.mean([d.fallback for _, d in in_scope])) if in_scope else 0.0,
        "oos_examples": len(oos),
        "oos_recall": float(np.mean([d.fallback for d in oos])) if oos else None,
        "confidence_threshold": settings.confidence_threshold,
        "ambiguity_threshold": settings.ambiguity_threshold,
    }
    report["summary"] = summary
    return {"report": report, "errors": errors, "summary": summary, "labels": labels,
            "y_true": y_true, "y_pred": y_pred, "in_scope": in_scope}


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


def write_reports(result: dict, out_dir: str | Path) -> Path:
    """Write the four report files into `out_dir` (replaced as a whole)."""
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / FILES[0], result["report"])
        atomic_write_json(tmp / FILES[1], result["errors"])
        _confusion_png(result, tmp / FILES[2])
        _histogram_png(result, tmp / FILES[3])
    return Path(out_dir)
