"""Intent classification and the fallback rule."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bot.data import Encoder
from bot.model import DialogueModel
from bot.neighbours import Neighbours
from bot.spec import Settings


@torch.no_grad()
def _batched(model: DialogueModel, enc: Encoder, texts: list[str], batch_size: int, fn, width: int,
             contexts: list[list[str]] | None = None) -> torch.Tensor:
    """`fn(input_ids, attention_mask)` over the texts' classifier prefixes in batches, eval mode, on the CPU;
    `contexts[i]`: the earlier user texts text i is read after (`Encoder.classify`)."""
    was_training = model.training
    model.eval()
    out = []
    contexts = contexts or [()] * len(texts)
    for k in range(0, len(texts), batch_size):
        batch = enc.pad_batch([enc.classify(t, c) for t, c in zip(texts[k:k + batch_size], contexts[k:k + batch_size])])
        out.append(fn(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, width)


def predict_features(model: DialogueModel, enc: Encoder, texts: list[str], batch_size: int = 64,
                     contexts: list[list[str]] | None = None) -> torch.Tensor:
    """What the intent head reads for each text, shape (len(texts), hidden size), float32 on the CPU."""
    return _batched(model, enc, texts, batch_size, model.intent_features, model.score.in_features, contexts)


def predict_logits(model: DialogueModel, enc: Encoder, texts: list[str], batch_size: int = 64,
                   contexts: list[list[str]] | None = None) -> torch.Tensor:
    """Raw (uncalibrated) intent logits for each text, shape (len(texts), n_intents), float32 on the CPU."""
    return _batched(model, enc, texts, batch_size, model.intent_logits, len(model.intents), contexts)


def predict_proba(model: DialogueModel, enc: Encoder, texts: list[str], batch_size: int = 64,
                  contexts: list[list[str]] | None = None) -> torch.Tensor:
    """Calibrated softmax over intents for each text (after `contexts`, see `_batched`), shape
    (len(texts), n_intents), on the CPU."""
    return model.calibrated(predict_logits(model, enc, texts, batch_size, contexts))


def predict(model: DialogueModel, enc: Encoder, texts: list[str], neighbours: Neighbours | None = None,
            batch_size: int = 64, contexts: list[list[str]] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(calibrated probabilities, distances to the training examples or None without `neighbours`): what `decide`
    reads. A text read after earlier turns that gets the same intent as its last earlier turn read alone is a
    follow-up that keeps the conversation's intent ("it's order 4432" after a request to cancel): it is as familiar
    as that turn, so it gets that turn's distance (the follow-up alone names nothing the bot was taught)."""
    if neighbours is None:
        return predict_proba(model, enc, texts, batch_size, contexts), None
    probs, features = _probs_and_features(model, enc, texts, batch_size, contexts)
    dist = neighbours.distance(features)
    after = [i for i, c in enumerate(contexts or []) if c]
    if after:
        earlier, earlier_features = _probs_and_features(model, enc, [contexts[i][-1] for i in after], batch_size)
        keeps = probs[after].argmax(1) == earlier.argmax(1)
        dist[after] = torch.where(keeps, neighbours.distance(earlier_features), dist[after])
    return probs, dist


def _probs_and_features(model, enc, texts, batch_size, contexts=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibrated probabilities, intent features) from one pass."""
    n = len(model.intents)
    both = _batched(model, enc, texts, batch_size, lambda ids, mask: torch.cat(
        [x.float() for x in model.intent_logits_and_features(ids, mask)], 1), n + model.score.in_features, contexts)
    return model.calibrated(both[:, :n]), both[:, n:]


@dataclass
class Decision:
    intent: str
    confidence: float
    ranking: list[tuple[str, float]]
    fallback: bool
    fallback_reason: str | None  # "low_confidence", "unfamiliar", "ambiguous" or None
    confidence_threshold: float
    ambiguity_threshold: float
    distance: float | None = None  # to the training examples (bot/neighbours.py); None: the model has no index
    distance_threshold: float | None = None

    def fallback_reason_at(self, confidence_threshold: float) -> str | None:
        """The fallback rule, the one place it is written: Rasa's FallbackClassifier rule, fall back below
        `confidence_threshold` ("low_confidence"), or when the top two intents are closer than the ambiguity
        threshold ("ambiguous"); and, given the message's distance to the training examples (bot/neighbours.py),
        when it lies farther than the distance threshold ("unfamiliar"). The first that holds is named.
        `decide` applies it at the bot's threshold; `bot.evaluate` asks it at other thresholds."""
        top = self.ranking[0][1]
        gap = top - self.ranking[1][1] if len(self.ranking) > 1 else 1.0
        if top < confidence_threshold:
            return "low_confidence"
        far = self.distance is not None and self.distance_threshold is not None
        if far and self.distance > self.distance_threshold:
            return "unfamiliar"
        if gap < self.ambiguity_threshold:
            return "ambiguous"
        return None


def decide(probs: torch.Tensor, intents: list[str], settings: Settings, top_k: int = 5,
           distance: float | None = None, distance_threshold: float | None = None) -> Decision:
    """The decision on one message's calibrated probabilities (and its distance to the training examples, with the
    distance rule's threshold): the top intent, the top `top_k`, and whether to fall back
    (`Decision.fallback_reason_at` the bot's confidence threshold)."""
    values, idx = probs.topk(min(top_k, len(intents)))
    ranking = [(intents[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]
    distance = None if distance is None else float(distance)
    d = Decision(ranking[0][0], ranking[0][1], ranking, False, None, settings.confidence_threshold,
                 settings.ambiguity_threshold, distance, distance_threshold if distance is not None else None)
    d.fallback_reason = d.fallback_reason_at(settings.confidence_threshold)
    d.fallback = d.fallback_reason is not None
    return d


def decide_each(probs: torch.Tensor, intents: list[str], settings: Settings, distances: torch.Tensor | None = None,
                neighbours: Neighbours | None = None) -> list[Decision]:
    """`decide` for each row of calibrated probabilities, with its distance and `neighbours`' threshold (both as
    `predict` returns them; None: no distance rule)."""
    threshold = neighbours.threshold if neighbours else None
    return [decide(p, intents, settings, distance=None if distances is None else distances[i],
                   distance_threshold=threshold) for i, p in enumerate(probs)]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 that minimises the negative log-likelihood of
    `labels` under softmax(logits / T). An overconfident model gets T > 1 (its probabilities are softened);
    argmax, so accuracy, is unchanged."""
    logits, labels = logits.detach().float(), labels.detach()
    if not len(labels):
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def nll():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(nll)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
