"""Fusing the intent probability and the feature distance into one out-of-scope score, on the demo model that
`benchmarks/oos.py --setting demo` trained: does a fused score beat the TF-IDF + logistic-regression baseline at the
same in-scope accuracy where the shipped rule (probability rule OR distance rule) ties with it?

Each fused score is thresholded, beside the bot's probability and gap rules, at a quantile of the *validation*
split's scores (as the distance rule is); the baseline is read at each row's in-scope accuracy with fallback. The
weights in `d + w * -log p` are a sweep, so a row that wins by a question or two was picked on the test set.
The plot shows OOS recall against in-scope accuracy with fallback over all thresholds, for the shipped rule (its
distance quantile swept) and the baseline (its probability threshold swept): where one curve lies above the other.

    python benchmarks/oos.py --setting demo --no-ablation      # trains the model (~16 min on 2 CPU cores)
    python benchmarks/oos_fusion.py                             # ~2 min; writes benchmarks/out/oos_fusion/curve.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from bot.classify import predict  # noqa: E402
from bot.dialogue import Bot  # noqa: E402
from bot.neighbours import upper_quantile  # noqa: E402
from bot.spec import OUT_OF_SCOPE, demo_bot_path, load_bot  # noqa: E402
from bot.train import training_split  # noqa: E402
from oos import banking_oos, baseline_probs, decide, matched_threshold, sgd_test_oos  # noqa: E402
from safety.guard import served_text  # noqa: E402


def top(p: np.ndarray) -> np.ndarray:
    return np.sort(p, 1)[:, -1]


def neg_log(p: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(top(p), 1e-6, 1))


SCORES = {
    "distance (shipped)": lambda p, d: d,
    "-log top probability": lambda p, d: neg_log(p),
    "distance / top probability": lambda p, d: d / np.clip(top(p), 1e-3, 1),
    **{f"distance + {w:g} × -log top probability": (lambda w: lambda p, d: d + w * neg_log(p))(w)
       for w in (0.02, 0.05, 0.1, 0.2)},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("benchmarks/out/oos/demo-oe0.5"))
    p.add_argument("--n-oos", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/oos_fusion"))
    args = p.parse_args()
    spec, _ = load_bot(demo_bot_path())
    intents = list(spec.intents)
    th, amb = spec.settings.confidence_threshold, spec.settings.ambiguity_threshold
    test = [e for e in spec.test if e.intent != OUT_OF_SCOPE]
    y = np.array([intents.index(e.intent) for e in test])
    read = [served_text(e.text) for e in test]
    oos = [served_text(t) for t in banking_oos(args.n_oos, args.seed) + sgd_test_oos(args.n_oos, args.seed)]
    val = [r for r in training_split(spec, served_text)[1] if not r.context]  # each read alone, as the test is
    bot = Bot(args.model)
    if bot.neighbours is None:
        raise SystemExit(f"{args.model}: no distance rule (neighbours.safetensors) to fuse")

    def scored(texts):
        probs, dist = predict(bot.model, bot.enc, texts, bot.neighbours)
        return probs.numpy(), dist.numpy()

    (p_in, d_in), (p_oos, d_oos), (p_val, d_val) = scored(read), scored(oos), scored([r.text for r in val])
    train_x, train_y = [served_text(e.text) for e in spec.examples], [e.intent for e in spec.examples]
    b_in, b_oos = baseline_probs(train_x, train_y, read, intents), baseline_probs(train_x, train_y, oos, intents)
    labels = np.r_[np.zeros(len(read)), np.ones(len(oos))]
    n_bank = args.n_oos

    def baseline_recall(acc_fb: float) -> float:
        t = matched_threshold(b_in, y, acc_fb, amb)
        return float(decide(b_oos, t, amb)[2].mean())

    print(f"{len(read)} in-scope test questions, {len(oos)} out of scope ({n_bank} BANKING77, the rest SGD test); "
          f"{len(val)} validation questions fit each threshold; model {args.model}\n")
    quantiles = (0.98, 0.99, 0.995)
    print("| OOS score | AUROC: all | AUROC: BANKING77 | "
          + " | ".join(f"q {q}: in-scope acc with fallback | q {q}: OOS recall | q {q}: baseline's at that accuracy"
                       for q in quantiles) + " |")
    print("|---" * (3 + 3 * len(quantiles)) + "|")
    base_top_in, base_top_oos = -top(b_in), -top(b_oos)
    rows = [("TF-IDF + LR: 1 - top probability", base_top_in, base_top_oos, None)]
    rows += [(name, f(p_in, d_in), f(p_oos, d_oos), f(p_val, d_val)) for name, f in SCORES.items()]
    for name, s_in, s_oos, s_val in rows:
        auc = roc_auc_score(labels, np.r_[s_in, s_oos])
        auc_bank = roc_auc_score(np.r_[np.zeros(len(read)), np.ones(n_bank)], np.r_[s_in, s_oos[:n_bank]])
        cells = [f"{auc:.4f}", f"{auc_bank:.4f}"]
        for q in quantiles:
            if s_val is None:
                cells += ["-", "-", "-"]
                continue
            tau = upper_quantile(s_val, q)  # as the distance rule's threshold is fitted
            pred, _, fb = decide(p_in, th, amb, s_in, tau)  # the bot's probability and gap rules, OR score > tau
            acc_fb = float(((pred == y) & ~fb).mean())
            recall = float(decide(p_oos, th, amb, s_oos, tau)[2].mean())
            cells += [f"{acc_fb:.4f}", f"{recall:.4f}", f"{baseline_recall(acc_fb):.4f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")

    # the curves: every distance threshold of the shipped rule, every probability threshold of the baseline
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    taus = np.unique(np.r_[d_in, np.quantile(d_oos, np.linspace(0, 1, 201))])
    pred_in, _, fb_in = decide(p_in, th, amb)  # the probability and gap rules, then each distance threshold beside them
    fb_oos = decide(p_oos, th, amb)[2]
    pts = np.array([(((pred_in == y) & ~(fb_in | (d_in > tau))).mean(), (fb_oos | (d_oos > tau)).mean())
                    for tau in taus])
    ax.plot(pts[:, 0], pts[:, 1], label="Candor: probability rules OR distance > τ (τ swept)")
    base = []
    for t in np.linspace(0, 1, 501):
        pred, _, fb = decide(b_in, t, amb)
        base.append((((pred == y) & ~fb).mean(), decide(b_oos, t, amb)[2].mean()))
    base = np.array(base)
    ax.plot(base[:, 0], base[:, 1], label="TF-IDF + LR: probability < t (t swept)")
    tau = bot.neighbours.threshold
    ax.scatter([((pred_in == y) & ~(fb_in | (d_in > tau))).mean()], [(fb_oos | (d_oos > tau)).mean()], color="k",
               zorder=3, label=f"Candor as served (τ = {bot.neighbours.threshold:.3f}, validation q 0.99)")
    ax.set_xlim(0.95, 1.0)
    ax.set_ylim(0.6, 1.0)
    ax.set_xlabel("in-scope accuracy with fallback (test)")
    ax.set_ylabel("out-of-scope recall (test)")
    ax.set_title("Demo bot: out-of-scope recall at each in-scope accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out / "curve.png", dpi=120)
    print(f"\nwrote {args.out / 'curve.png'}")


if __name__ == "__main__":
    main()
