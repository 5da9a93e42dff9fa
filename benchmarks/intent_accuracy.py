"""BANKING77 intent accuracy: Candor's offline-default GPT-2 vs a word+char TF-IDF + LinearSVC baseline,
side by side in one run, on the official test split (all 3,080 rows).

    python benchmarks/intent_accuracy.py [--epochs 12] [--n-layer 4 --n-embd 256] [--device auto]
    python benchmarks/intent_accuracy.py --base benchmarks/out/public_sgd   # fine-tune a public base
                                                                          # (`candor pretrain-public`)
"""
from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.svm import LinearSVC

from bot.classify import predict_proba
from bot.importers import from_banking77
from bot.train import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"


def official_test(folder: Path) -> tuple[list[str], list[str]]:
    with open(folder / "test.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"].strip() for r in rows], [r["category"] for r in rows]


def baseline(train_x, train_y, test_x) -> list[str]:
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    x = hstack([word.fit_transform(train_x), char.fit_transform(train_x)]).tocsr()
    clf = LinearSVC(C=1.0).fit(x, train_y)
    return list(clf.predict(hstack([word.transform(test_x), char.transform(test_x)]).tocsr()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--base", default="scratch", help="'scratch' (the offline default) or a public base directory "
                                                      "made by `candor pretrain-public` (its size is used)")
    p.add_argument("--outlier-weight", type=float, default=None,
                   help="outlier exposure weight (default: the bot default; 0 turns it off)")
    p.add_argument("--classify-context", type=int, default=None,
                   help="earlier user turns the classifier reads (default: the bot default; 0 reads each alone)")
    p.add_argument("--weight-average", type=float, default=None,
                   help="decay of the averaged weights fine-tuning keeps (default: the bot default; 0: the last weights)")
    p.add_argument("--label-smoothing", type=float, default=None, help="of the intent loss (default: the bot default)")
    p.add_argument("--rdrop", type=float, default=None, help="R-drop weight (default: the bot default; 0: off)")
    p.add_argument("--pretrain-corpus", default=None,
                   help="public text the LM also pre-trains on (.txt/.csv; default: the bot default, none)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training split held out for validation (default: the bot default)")
    p.add_argument("--word-dropout", type=float, default=None,
                   help="chance of dropping (and inserting) a word in a training view (default: the bot default)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="of training's forward passes (default: the bot default, fp32)")
    p.add_argument("--seed", type=int, default=0, help="training seed (split, order, initial weights)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/banking77"))
    args = p.parse_args()

    spec = from_banking77(args.data)
    spec.model.n_layer, spec.model.n_head, spec.model.n_embd = args.n_layer, args.n_head, args.n_embd
    spec.model.max_length, spec.model.base = 128, args.base
    spec.training.epochs, spec.training.pretrain_epochs = args.epochs, args.pretrain_epochs
    spec.training.batch_size, spec.training.learning_rate = args.batch_size, args.lr
    spec.training.checkpoint_every, spec.training.patience, spec.training.seed = 0, 4, args.seed
    if args.outlier_weight is not None:
        spec.training.outlier_weight = args.outlier_weight
    for name in ("weight_average", "label_smoothing", "rdrop", "val_fraction", "pretrain_corpus", "precision",
                 "word_dropout"):
        if getattr(args, name) is not None:
            setattr(spec.training, name, getattr(args, name))
    if args.classify_context is not None:
        spec.settings.classify_context = args.classify_context
    test_x, test_y = official_test(args.data)
    train_x = [e.text for e in spec.examples]
    train_y = [e.intent for e in spec.examples]

    rows = []
    t0 = time.time()
    pred = baseline(train_x, train_y, test_x)
    rows.append(("TF-IDF word+char + LinearSVC", accuracy_score(test_y, pred), f1_score(test_y, pred, average="macro"),
                 time.time() - t0))

    t0 = time.time()
    trainer = Trainer(spec, args.out, device=args.device, progress=True)
    trainer.run()
    probs = predict_proba(trainer.model, trainer.enc, test_x)
    pred = [trainer.model.intents[i] for i in probs.argmax(1).tolist()]
    params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    cfg = trainer.model.lm.config
    what = "scratch" if args.base == "scratch" else f"from public base {args.base}"
    rows.append((f"Candor GPT-2 {what} {cfg.n_layer}L/{cfg.n_embd}d ({params:.1f}M params)",
                 accuracy_score(test_y, pred), f1_score(test_y, pred, average="macro"), time.time() - t0))

    device = torch.cuda.get_device_name() if trainer.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nBANKING77 official test split ({len(test_x)} rows); {platform.node()} {device}; "
          f"epochs {args.epochs}" + (f" (+{args.pretrain_epochs} LM pre-training)" if args.base == "scratch" else "")
          + f", early stopping patience 4, seed {args.seed}")
    t = spec.training
    print(f"learning rate {t.learning_rate}, word dropout {t.word_dropout}, "
          f"outlier exposure weight {t.outlier_weight}, weight average {t.weight_average}, label smoothing "
          f"{t.label_smoothing}, R-drop {t.rdrop}, validation share {t.val_fraction}, "
          f"public LM pre-training text {t.pretrain_corpus or 'none'}, precision {t.precision}; "
          f"{len(trainer.train_records)} training rows for GPT-2, {len(train_x)} for the baseline")
    print("| model | accuracy | macro-F1 | wall time (s) |\n|---|---|---|---|")
    for name, acc, f1, secs in rows:
        print(f"| {name} | {acc:.4f} | {f1:.4f} | {secs:.0f} |")
    if args.base != "scratch":
        from bot.model import read_card
        base = read_card(args.base)
        print(f"\nthe public base took {base['training']['seconds']:.0f} s to build, once "
              f"({base.get('public_base', {}).get('sources')}); the wall time above is fine-tuning only")
    print(f"\nGPT-2 minus baseline: {100 * (rows[1][1] - rows[0][1]):+.2f} accuracy points")


if __name__ == "__main__":
    np.random.seed(0)
    main()
