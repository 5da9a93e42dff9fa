"""Choose the DP prototype head's whitening ridge on public data only (issue 14: hyperparameters from public data).

A public stand-in for a private bot: Schema-Guided Dialogue user turns (`../shared/data/sgd_user_turns/`), their
intent labels, train split as the "private" records and dev split as the test. Features come from a public base
(the one DP training starts from); the whitening is fitted on other public text, as `privacy.head_init: prototype`
does (safety/prototypes.py). Prints nearest-prototype accuracy for each ridge, without noise and with the
Gaussian mechanism's noise at ε = 1, 3, 8 (σ from the same accountant and δ the DP trainer uses).

    python benchmarks/prototype_public.py --base benchmarks/out/banking77_pub
"""
from __future__ import annotations

import argparse
import csv
import gzip
import random
from pathlib import Path

import torch

from bot.data import Encoder, read_corpus
from bot.model import load as load_model
from safety.guard import served_text
from safety.privacy import BUNDLED_PUBLIC, PROTOTYPE_PUBLIC, noise_for
from bot.classify import predict_features
from safety.prototypes import fit_whitening, head_weights, noisy_sums, unit_vectors

SGD = Path(__file__).resolve().parents[2] / "shared" / "data" / "sgd_user_turns" / "sgd_user_turns.csv.gz"


def prototype_accuracy(units, y_train, n_classes: int, x_test, y_test, transform, typical: float, sigma: float,
                       draws: int = 5) -> float:
    """Test accuracy of the head from the per-intent sums of `units` plus N(0, σ²) noise, the mean over `draws`
    fixed noise draws (one when σ = 0)."""
    accs = []
    for seed in range(draws if sigma else 1):
        sums = noisy_sums(units, y_train, n_classes, sigma, torch.Generator().manual_seed(seed))
        accs.append(float(((x_test @ head_weights(sums, transform, typical).T).argmax(1) == y_test).float().mean()))
    return sum(accs) / len(accs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a Candor model directory built from public data only")
    p.add_argument("--train", type=int, default=4000, help="SGD train-split turns used as the records")
    p.add_argument("--test", type=int, default=2000, help="SGD dev-split turns used as the test")
    p.add_argument("--shrinks", nargs="+", type=float, default=[0.001, 0.01, 0.1, 1.0])
    p.add_argument("--epsilons", nargs="+", type=float, default=[1, 3, 8])
    p.add_argument("--delta", type=float, default=1e-5)
    args = p.parse_args()

    with gzip.open(SGD, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    random.Random(0).shuffle(rows)
    train = [r for r in rows if r["split"] == "train"][:args.train]
    labels = sorted({r["intent"] for r in train})
    test = [r for r in rows if r["split"] == "dev" and r["intent"] in labels][:args.test]
    model, tok = load_model(args.base)
    enc = Encoder(tok, 64)
    norm = lambda texts: [served_text(t, redact=False) for t in texts]  # noqa: E731 (normalised as served)
    x_train = predict_features(model, enc, norm([r["text"] for r in train]))
    x_test = predict_features(model, enc, norm([r["text"] for r in test]))
    public = predict_features(model, enc, norm(read_corpus(BUNDLED_PUBLIC)[:PROTOTYPE_PUBLIC]))
    y_train = torch.tensor([labels.index(r["intent"]) for r in train])
    y_test = torch.tensor([labels.index(r["intent"]) for r in test])
    sigmas = {eps: noise_for(eps, args.delta, 1.0, 1) for eps in args.epsilons}
    print(f"SGD public stand-in: {len(train)} records, {len(test)} test turns, {len(labels)} intents; base {args.base}")
    print("| ridge (× mean eigenvalue) | no noise | " + " | ".join(f"ε {e:g} (σ {s:.2f})" for e, s in sigmas.items())
          + " |")
    print("|---" * (2 + len(sigmas)) + "|")
    for shrink in args.shrinks:
        transform, typical = fit_whitening(public, shrink)
        units = unit_vectors(x_train, transform)
        cells = [f"{prototype_accuracy(units, y_train, len(labels), x_test, y_test, transform, typical, sigma):.4f}"
                 for sigma in [0.0, *sigmas.values()]]
        print(f"| {shrink:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
