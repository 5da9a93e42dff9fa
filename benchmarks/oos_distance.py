"""Out-of-scope detection with a feature-distance score: is the distance from a question's intent features to the
nearest training examples' a better out-of-scope signal than the intent probability, and does it beat the
TF-IDF + logistic-regression baseline at the same in-scope accuracy?

Demo setting of benchmarks/oos.py (the demo bot's in-scope test questions against 1,000 BANKING77 and 1,000 SGD
test-split questions). The score: 1 - mean cosine similarity of the question's intent features (what the intent
head reads) to its k nearest training examples' (the training split, each read alone). The fallback is the bot's
rule (probability / gap) OR a distance above tau. The table sweeps tau over quantiles of the in-scope *test*
distances, which favours the distance score (a served bot would pick tau on the validation split), and reads the
baseline at each row's in-scope accuracy with fallback.

    candor train -o benchmarks/out/oos_distance/demo        # the demo bot with the defaults (~16 min)
    python benchmarks/oos_distance.py --model benchmarks/out/oos_distance/demo
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bot.classify import predict_features, predict_proba
from bot.dialogue import Bot
from bot.spec import OUT_OF_SCOPE, Settings, demo_bot_path, load_bot
from bot.train import training_split
from oos import banking_oos, baseline_probs, decide, matched_threshold, sgd_test_oos
from safety.guard import served_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("benchmarks/out/oos_distance/demo"))
    p.add_argument("--n-oos", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    spec, _ = load_bot(demo_bot_path())
    intents, settings = list(spec.intents), Settings()
    th, amb = settings.confidence_threshold, settings.ambiguity_threshold
    test = [e for e in spec.test if e.intent != OUT_OF_SCOPE]
    y = np.array([intents.index(e.intent) for e in test])
    read = [served_text(e.text) for e in test]
    oos = {"BANKING77": [served_text(t) for t in banking_oos(args.n_oos, args.seed)],
           "SGD test split": [served_text(t) for t in sgd_test_oos(args.n_oos, args.seed)]}
    train_recs = [r for r in training_split(spec, served_text)[0] if not r.context]

    bot = Bot(args.model)

    def features(texts):
        return torch.nn.functional.normalize(predict_features(bot.model, bot.enc, texts), dim=-1)

    known = features([r.text for r in train_recs])

    def distance(texts, k):
        return (1 - (features(texts) @ known.T).topk(k, dim=1).values.mean(1)).numpy()

    p_in = predict_proba(bot.model, bot.enc, read).numpy()
    p_oos = np.concatenate([predict_proba(bot.model, bot.enc, v).numpy() for v in oos.values()])
    pred, top, fb = decide(p_in, th, amb)
    _, top_o, fb_o = decide(p_oos, th, amb)
    labels = [0] * len(read) + [1] * len(p_oos)
    print(f"{len(read)} in-scope test questions, " + ", ".join(f"{len(v)} {k}" for k, v in oos.items())
          + f"; {len(train_recs)} training examples; model {args.model}\n")
    print("| OOS score | AUROC: BANKING77 | AUROC: SGD | AUROC: all |\n|---|---|---|---|")
    split = len(oos["BANKING77"])

    def aurocs(s_in, s_oos):
        return [roc_auc_score([0] * len(s_in) + [1] * len(part), np.concatenate([s_in, part]))
                for part in (s_oos[:split], s_oos[split:])] + [roc_auc_score(labels, np.concatenate([s_in, s_oos]))]

    print("| 1 - top probability (the bot's score) | " + " | ".join(f"{a:.4f}" for a in aurocs(-top, -top_o)) + " |")
    dist = {}
    for k in (1, 5, 20):
        dist[k] = distance(read, k), np.concatenate([distance(v, k) for v in oos.values()])
        print(f"| distance to the {k} nearest training examples | "
              + " | ".join(f"{a:.4f}" for a in aurocs(*dist[k])) + " |")

    train_x = [served_text(e.text) for e in spec.examples]
    b_in = baseline_probs(train_x, [e.intent for e in spec.examples], read, intents)
    b_oos = np.concatenate([baseline_probs(train_x, [e.intent for e in spec.examples], v, intents)
                            for v in oos.values()])
    d_in, d_oos = dist[20]
    print("\nFallback = the bot's rule at its default threshold OR distance (k = 20) above tau; tau at quantiles of "
          "the in-scope test distances; the baseline read at the same in-scope accuracy with fallback")
    print("| tau (quantile) | in-scope acc with fallback | OOS recall | baseline OOS recall at that accuracy |\n"
          "|---|---|---|---|")
    print(f"| none (the bot's rule alone) | {((pred == y) & ~fb).mean():.4f} | {fb_o.mean():.4f} | "
          f"{decide(b_oos, matched_threshold(b_in, y, ((pred == y) & ~fb).mean(), amb), amb)[2].mean():.4f} |")
    for q in (0.9, 0.95, 0.98, 0.99, 0.995, 1.0):
        tau = float(np.quantile(d_in, q))
        acc_fb = ((pred == y) & ~(fb | (d_in > tau))).mean()
        recall = (fb_o | (d_oos > tau)).mean()
        base = decide(b_oos, matched_threshold(b_in, y, acc_fb, amb), amb)[2].mean()
        print(f"| {tau:.3f} ({q}) | {acc_fb:.4f} | {recall:.4f} | {base:.4f} |")


if __name__ == "__main__":
    main()
