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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bot.classify import predict_features
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


def head_weights(sums: torch.Tensor, transform: torch.Tensor, typical_norm: float) -> torch.Tensor:
    """Head rows whose logits are LOGIT_SCALE × cos(whitened features, prototype) at the typical feature length:
    W = scale · normalise(sums) · Aᵀ, so that W h = scale · ⟨prototype, A h⟩."""
    return LOGIT_SCALE / max(typical_norm, 1e-12) * F.normalize(sums, dim=1) @ transform.T


@torch.no_grad()
def prototype_head(model: DialogueModel, enc: Encoder, texts: list[str], labels: list[int], public_texts: list[str],
                   sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """The intent head's new weight from the private `texts` (one per record) and their intent indices, with
    the whitening fitted on `public_texts`; σ is the Gaussian mechanism's noise multiplier."""
    transform, typical = fit_whitening(predict_features(model, enc, public_texts))
    units = unit_vectors(predict_features(model, enc, texts), transform)
    sums = noisy_sums(units, torch.tensor(labels, dtype=torch.long), len(model.intents), sigma, generator)
    return head_weights(sums, transform, typical)
