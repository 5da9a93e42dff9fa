"""The intent head from noisy per-intent prototypes: one Gaussian-mechanism release that safety/privacy.py
makes before DP-SGD (its accountant composes the two; with no DP-SGD epochs it is the whole private step).

Each training record becomes one vector: the hidden state the intent head reads (of the public base, before
any private step), multiplied by a whitening matrix fitted on public text only, and scaled to length 1. So
adding or removing one record moves one intent's sum by at most one unit vector: the per-intent sums have
L2 sensitivity 1, and releasing them plus N(0, σ²) noise in every coordinate is the Gaussian mechanism (in
the accountant's history: sample rate 1, one step). The head's row for an intent is its noisy sum's
direction, mapped back through the whitening: the head scores a message by the cosine between its whitened
features and each intent's prototype (the nearest-class-mean rule). Noise hardly moves that rule: each
intent's sum grows with its examples, the noise (about σ·√d long) does not, and a message's score sees only
the noise along its own direction (about σ).

With n-grams (`DialogueModel.ngrams`, bot/ngrams.py) a record's vector has a second part: the indicator of its
message's hashed n-gram buckets, scaled to length 1. The two parts are weighted √(1 − s) and √s (s =
`privacy.ngram_share`), so the joint vector still has length 1 and one release covers both: the first part's sums
make the head's rows, the second's the n-gram rows. Each part's rows are divided by an estimate of its signal's
length, ‖noisy sum‖² − σ²·(its dimension) (the noise's expected share removed), not by the noisy sum's length:
over 32,767 buckets the noise is most of that length, and dividing by it would rank the intents by their noise.
Everything after the release is computed from the noisy sums and public text alone (post-processing).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bot.classify import fit_temperature, predict_features
from bot.data import Encoder
from bot.model import DialogueModel

SHRINK = 0.01  # the whitening's ridge, as a share of the mean eigenvalue (public features can be near-singular)
LOGIT_SCALE = 10.0  # head logits = LOGIT_SCALE × cosine for a message of typical (public) feature length


def whitening(public: torch.Tensor, shrink: float = SHRINK) -> torch.Tensor:
    """A = C^(-1/2), C the covariance of public features plus a ridge of `shrink` × its mean eigenvalue."""
    if len(public) < 2:
        return torch.eye(public.shape[1])
    cov = torch.cov(public.double().T)
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(0) + shrink * values.clamp_min(0).mean() + 1e-12
    return (vectors @ torch.diag(values.rsqrt()) @ vectors.T).float()


def fit_whitening(public: torch.Tensor, shrink: float = SHRINK) -> tuple[torch.Tensor, float]:
    """The whitening of `public` features and their typical (median) whitened length, for `head_weights`."""
    transform = whitening(public, shrink)
    return transform, float((public @ transform).norm(dim=1).median()) if len(public) else 1.0


def unit_vectors(feats: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Each record's contribution: its whitened features scaled to length 1 (a function of that record alone); a
    record whose features are not finite contributes 0, so no vector is ever longer than 1."""
    units = F.normalize(feats @ transform, dim=1)
    return torch.where(units.isfinite().all(1, keepdim=True), units, torch.zeros_like(units))


def noisy_sums(units: torch.Tensor, labels: torch.Tensor, n_classes: int, sigma: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """Per-class sums of unit vectors plus N(0, σ²) per coordinate: the Gaussian mechanism, sensitivity 1."""
    sums = torch.zeros(n_classes, units.shape[1], dtype=torch.float64).index_add_(0, labels, units.double())
    noise = torch.randn(sums.shape, generator=generator, dtype=torch.float64) * sigma
    return (sums + noise).float()


def denoised(sums: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each noisy sum over an estimate of its signal's length: √(‖sum‖² − σ²·d), floored at twice that estimate's
    noise (σ²·√(2d)), so that an intent with little signal does not get a large row from noise alone. With σ = 0,
    each sum scaled to length 1."""
    d = sums.shape[1]
    power = sums.double().pow(2).sum(1) - sigma ** 2 * d
    floor = max(2 * sigma ** 2 * (2 * d) ** 0.5, 1e-12)
    return (sums.double() / power.clamp_min(floor).sqrt().unsqueeze(1)).float()


def head_weights(sums: torch.Tensor, transform: torch.Tensor, typical_norm: float, sigma: float = 0.0) -> torch.Tensor:
    """Head rows whose logits are LOGIT_SCALE × cos(whitened features, prototype) at the typical feature length:
    W = scale · denoised(sums) · Aᵀ, so that W h = scale · ⟨prototype, A h⟩."""
    return LOGIT_SCALE / max(typical_norm, 1e-12) * denoised(sums, sigma) @ transform.T


def bucket_units(model: DialogueModel, enc: Encoder, texts: list[str], batch_size: int = 256) -> list[torch.Tensor]:
    """Each text's n-gram buckets as the served model reads them (`DialogueModel.bucket_ids`), a bucket as often
    as the message has it (`ngram_sums` makes the unit vector)."""
    out = []
    for k in range(0, len(texts), batch_size):
        b = enc.pad_batch([enc.classify(t) for t in texts[k:k + batch_size]])
        ids = model.bucket_ids(b["input_ids"], b["attention_mask"])
        out += [row[row != 0] for row in ids]
    return out


def ngram_sums(buckets: list[torch.Tensor], labels: torch.Tensor, n_classes: int, n_buckets: int,
               weight: float) -> torch.Tensor:
    """Per-class sums of the records' n-gram unit vectors × `weight`, (n_classes, n_buckets), float64. A record's
    unit vector is its bucket counts c over ‖c‖; the model reads a message as Σ c_b·row_b / √(Σ c_b), the same
    direction, so its n-gram logits are a positive multiple (‖c‖ / √Σc, 1 when no bucket repeats) of the cosine."""
    sums = torch.zeros(n_classes * n_buckets, dtype=torch.float64)
    for row, c in zip(buckets, labels.tolist()):
        if len(row):
            ids, counts = row.unique(return_counts=True)
            sums.index_add_(0, c * n_buckets + ids, weight * counts.double() / counts.double().norm())
    return sums.view(n_classes, n_buckets)


def release(feats: torch.Tensor, buckets: list[torch.Tensor] | None, labels: torch.Tensor, n_classes: int,
            n_buckets: int, public_feats: torch.Tensor, sigma: float, generator: torch.Generator | None,
            share: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Gaussian release (module docstring) from the records' GPT-2 features and n-gram buckets (None: no
    n-grams, share 0): (head weight (n_classes, hidden), n-gram rows (n_buckets, n_classes) or None)."""
    head = torch.zeros(n_classes, feats.shape[1])
    if share < 1:  # all on the n-grams: GPT-2's part is 0, and its features are not even read (`features`)
        transform, typical = fit_whitening(public_feats)
        units = unit_vectors(feats, transform) * (1 - share) ** 0.5
        head = head_weights(noisy_sums(units, labels, n_classes, sigma, generator), transform, typical, sigma)
    if buckets is None or not share:
        return head, None
    grams = ngram_sums(buckets, labels, n_classes, n_buckets, share ** 0.5)
    grams = grams + torch.randn(grams.shape, generator=generator, dtype=torch.float64) * sigma
    grams[:, 0] = 0.0  # the padding bucket: no record has it, and the logits mask it out
    # the n-gram logits are Σ rows / √k over a message's k buckets: LOGIT_SCALE × the cosine with the prototype
    return head, (LOGIT_SCALE * denoised(grams, sigma)).T.contiguous()


def scores(feats: torch.Tensor, buckets: list[torch.Tensor] | None, head: torch.Tensor,
           grams: torch.Tensor | None) -> torch.Tensor:
    """Intent logits of messages as the model computes them from a release: head · features + the n-gram logits
    (Σ rows of a message's buckets / √their number)."""
    logits = feats @ head.T
    if grams is not None:
        logits = logits + torch.stack([grams[row].sum(0) / max(len(row), 1) ** 0.5 for row in buckets])
    return logits


@torch.no_grad()
def prototype_head(model: DialogueModel, enc: Encoder, texts: list[str], labels: list[int], public_texts: list[str],
                   sigma: float, generator: torch.Generator | None,
                   ngram_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the intent head's new weight, the n-gram rows' new weight or None) from the private `texts` (one per
    record) and their intent indices, with the whitening fitted on `public_texts`; σ is the Gaussian mechanism's
    noise multiplier; `ngram_share` the s of the module docstring (0 without n-grams)."""
    share = ngram_share if model.ngrams is not None else 0.0
    buckets = bucket_units(model, enc, texts) if share else None
    n_buckets = model.ngrams.num_embeddings if share else 0
    return release(features(model, enc, texts, share), buckets, torch.tensor(labels, dtype=torch.long),
                   len(model.intents), n_buckets, features(model, enc, public_texts, share), sigma, generator, share)


def features(model: DialogueModel, enc: Encoder, texts: list[str], share: float) -> torch.Tensor:
    """The GPT-2 features the release reads, or zeros when all of it is on the n-grams (share 1)."""
    return predict_features(model, enc, texts) if share < 1 else torch.zeros(len(texts), model.score.in_features)


@dataclass
class Estimate:
    """The accuracy the prototypes reach on public stand-in data of the bot's size (`standin_estimate`)."""
    accuracy: float  # mean over the draws
    low: float
    high: float
    intents: int  # stand-in intents used (the bot's number, or all the stand-in has)
    per_intent: int  # stand-in records per intent used, on average (the bot's, or all an intent has)
    source: str
    temperature: float = 1.0  # the temperature that calibrates the release's probabilities on the stand-in

    def line(self) -> str:
        return (f"{100 * self.accuracy:.0f}% (draws {100 * self.low:.0f}–{100 * self.high:.0f}%) on {self.source}, "
                f"{self.intents} of its intents with about {self.per_intent} records each")


@torch.no_grad()
def standin_estimate(model: DialogueModel, enc: Encoder, rows: list[tuple[str, str]], n_intents: int,
                     n_records: float, sigma: float, share: float, public_texts: list[str], source: str,
                     draws: int = 3, seed: int = 0) -> Estimate:
    """The accuracy to expect from the release at σ, measured on public labelled `rows` (text, intent) shaped like the
    bot: `n_intents` of their intents drawn at random, `n_records` / `n_intents` records each (as many as there
    are when fewer), a fifth of each intent's other rows as its test; the mean over `draws` draws. It reads
    public text, the public base and the bot's public numbers (intents, the noisy record count) only."""
    share = share if model.ngrams is not None else 0.0
    by_intent: dict[str, list[str]] = {}
    for text, intent in rows:
        by_intent.setdefault(intent, []).append(text)
    k = min(n_intents, len(by_intent))
    per_intent = max(1, round(n_records / max(n_intents, 1)))
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    public_feats = features(model, enc, public_texts, share)
    accs, used, logits, gold = [], 0, [], []
    for _ in range(draws):
        train, test = [], []
        for c, name in enumerate(rng.sample(sorted(by_intent), k)):
            texts = rng.sample(by_intent[name], len(by_intent[name]))
            n_test = max(1, len(texts) // 5)
            test += [(t, c) for t in texts[:n_test]]
            train += [(t, c) for t in texts[n_test:n_test + per_intent]]
        feats = features(model, enc, [t for t, _ in train + test], share)
        buckets = bucket_units(model, enc, [t for t, _ in train + test]) if share else None
        n = len(train)
        used += n / (k * draws)  # the mean records per intent: intents with fewer stand-in rows use them all
        head, grams = release(feats[:n], buckets[:n] if buckets else None, torch.tensor([c for _, c in train]), k,
                              model.ngrams.num_embeddings if share else 0, public_feats, sigma, generator, share)
        logits.append(scores(feats[n:], buckets[n:] if buckets else None, head, grams))
        gold.append(torch.tensor([c for _, c in test]))
        accs.append(float((logits[-1].argmax(1) == gold[-1]).float().mean()))
    return Estimate(sum(accs) / len(accs), min(accs), max(accs), k, round(used), source,
                    fit_temperature(torch.cat(logits), torch.cat(gold)))
