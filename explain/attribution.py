"""Which words made the bot choose an intent: Captum LayerIntegratedGradients on GPT-2's input embeddings.

F is the softmax probability of the explained intent for `<|user|> text<|intent|>`.
Baseline: every text token replaced by `<|pad|>`, role tokens and positions kept, so the
role tokens get exactly zero and the words share out F(text) − F(baseline).
Integration: `n_steps` Gauss-Legendre points, all in one batch by default (`internal_batch_size`).
Completeness: the token attributions sum to F(x) − F(baseline) up to `delta`, reported with each one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from captum.attr import LayerIntegratedGradients

from explain.words import normalise, segment, word_scores

N_STEPS = 32
INTERNAL_BATCH_SIZE = 32


@dataclass
class WordScore:
    word: str
    score: float  # normalised to [-1, 1] within this explanation, for display
    raw: float  # share of F(text) − F(baseline)
    start: int
    end: int


@dataclass
class Explanation:
    text: str
    intent: str  # the intent explained
    confidence: float  # F(text): its probability
    predicted: str  # the intent the bot chose
    words: list[WordScore]
    baseline_probability: float  # F(baseline)
    attribution_sum: float
    delta: float  # |sum of attributions − (F(text) − F(baseline))|
    method: str = "LayerIntegratedGradients(input embeddings)"
    baseline: str = "all text tokens replaced by <|pad|>"
    n_steps: int = N_STEPS
    internal_batch_size: int = INTERNAL_BATCH_SIZE
    reply: dict | None = field(default=None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def top_words(self, k: int) -> list[int]:
        """Indices of the k words that raised F the most."""
        return sorted(range(len(self.words)), key=lambda i: -self.words[i].raw)[:k]


class IntentExplainer:
    """Built once per model; `explain(text)` is cheap enough to run on every turn."""

    def __init__(self, model, enc, n_steps: int = N_STEPS, internal_batch_size: int = INTERNAL_BATCH_SIZE):
        self.model, self.enc = model, enc
        self.n_steps, self.internal_batch_size = n_steps, internal_batch_size
        self.lig = LayerIntegratedGradients(self._probability, model.lm.get_input_embeddings())

    def _probability(self, input_ids, attention_mask):
        return self.model.intent_logits(input_ids, attention_mask).softmax(-1)

    def explain(self, text: str, intent: str | None = None) -> Explanation:
        self.model.eval()
        seg = segment(self.enc.tok, text, self.enc.max_length - 2)
        ids = torch.tensor([[self.enc.user, *seg.token_ids, self.enc.intent]], device=self.model.device)
        base = ids.clone()
        base[0, 1:-1] = self.enc.pad
        mask = torch.ones_like(ids)
        with torch.no_grad():
            probs = self._probability(torch.cat([ids, base]), torch.cat([mask, mask]))
        predicted = int(probs[0].argmax())
        target = self.model.intents.index(intent) if intent else predicted
        attr, delta = self.lig.attribute(ids, baselines=base, target=target, additional_forward_args=(mask,),
                                         n_steps=self.n_steps, internal_batch_size=self.internal_batch_size,
                                         return_convergence_delta=True)
        per_token = attr.sum(-1)[0, 1:-1].detach().cpu()
        raw = word_scores(seg, per_token.tolist())
        words = [WordScore(w, s, r, a, b) for w, s, r, (a, b) in zip(seg.words, normalise(raw), raw, seg.spans)]
        return Explanation(text, self.model.intents[target], float(probs[0, target]), self.model.intents[predicted],
                           words, float(probs[1, target]), float(per_token.sum()), abs(float(delta)),
                           n_steps=self.n_steps, internal_batch_size=self.internal_batch_size)
