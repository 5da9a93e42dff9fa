"""Out of scope by distance: how far a message lies from everything the bot was trained on.

The intent probability answers "which intent is this most like?"; a question about something else can still get a
high one (a banking question near the shop's payment intents). The distance answers "is this like anything I was
taught?": 1 − the mean cosine similarity of the message's intent features (what the intent head reads) to those
of its `K` nearest training examples. The bot falls back as "unfamiliar" when the distance is above a threshold
fitted after training on the validation split: the distance that `quantile` of the held-out in-scope questions
stay within (so about 1 − quantile of in-scope questions pay for it). Measured against the probability alone:
BENCHMARKS.md, "Out-of-scope detection".

The index (the unit-length features of the training examples, float16) is saved beside the weights as
`neighbours.safetensors`, with `k`, the threshold and the quantile in its metadata. It is data the weights do not
summarise but hold one row per training example of: a model trained under DP ships none (the guarantee covers the
weights, not this), and neither does a model trained with `settings.distance_quantile: 0`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FILE = "neighbours.safetensors"
K = 20  # neighbours averaged: 1 was the weakest score, 20 the strongest of 1/5/20 (BENCHMARKS.md)


@dataclass
class Neighbours:
    features: torch.Tensor  # (examples, hidden) unit rows, float32
    k: int
    threshold: float  # fall back ("unfamiliar") above this distance
    quantile: float  # of the validation split's distances the threshold was fitted at

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """1 − mean cosine similarity to the `k` nearest examples, one per row of `features` (any scale)."""
        f = torch.nn.functional.normalize(features.float(), dim=-1)
        k = min(self.k, len(self.features))
        return 1 - (f @ self.features.T).topk(k, dim=1).values.mean(1)

    def save(self, directory: str | Path) -> None:
        save_file({"features": self.features.half().contiguous()}, str(Path(directory) / FILE),
                  metadata={"k": str(self.k), "threshold": repr(self.threshold), "quantile": repr(self.quantile)})

    def describe(self) -> dict:
        return {"k": self.k, "threshold": round(self.threshold, 4), "quantile": self.quantile,
                "fitted_on": "validation split"}


def upper_quantile(values, quantile: float) -> float:
    """The `quantile` of `values` as the higher order statistic: at least that share of them lie at or below it
    (never below the quantile)."""
    v = torch.as_tensor(values).flatten().sort().values
    return float(v[min(len(v), max(1, math.ceil(quantile * len(v) - 1e-9))) - 1])


def fit(train: torch.Tensor, validation: torch.Tensor, quantile: float, k: int = K) -> Neighbours:
    """The index of the training examples' features and the threshold that `quantile` of the validation examples'
    distances stay within (`upper_quantile`)."""
    if not len(train) or not len(validation):
        raise ValueError("the distance rule needs training and validation examples")
    # rounded as saved (float16), so that the served distances are the ones the threshold was fitted on
    index = Neighbours(torch.nn.functional.normalize(train.float(), dim=-1).half().float(), k, 0.0, quantile)
    index.threshold = upper_quantile(index.distance(validation), quantile)
    return index


def load(directory: str | Path) -> Neighbours | None:
    """The model's index, or None when it has none (DP, switched off, or trained before the distance rule)."""
    from bot.model import check_safetensors

    path = Path(directory) / FILE
    if not path.is_file():
        return None
    check_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        features = f.get_tensor("features").float()
    try:
        return Neighbours(features, int(meta["k"]), float(meta["threshold"]), float(meta["quantile"]))
    except (KeyError, ValueError) as e:
        from bot.io import ModelFileError

        raise ModelFileError(f"{path}: its metadata lacks a valid {e}; retrain the model") from None
