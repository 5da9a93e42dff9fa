"""Which words made the bot choose an intent: Captum IntegratedGradients on GPT-2's input embeddings and on the
weight of each word's n-grams.

F is the calibrated probability (`DialogueModel.intent_probs`) of the explained intent for the classifier's input,
`<|user|> earlier <|user|> text<|intent|>` (the earlier user turns it reads, if any: `Encoder.classify`).
The intent head adds to GPT-2's logits those of the message's hashed character n-grams (bot/ngrams.py), each
word's on its first token, scaled by a per-token weight: 1 as read. Baseline: the embedding of every text token
replaced by one baseline vector (`BASELINES`) and every weight 0 (no n-gram logits), role tokens and positions
kept, so the role tokens get exactly zero and the words, with the earlier turns as one more item (`EARLIER`),
share out F(input) − F(baseline); a token's attribution is its embedding's plus its n-gram weight's.
The default, the mean of the trained token embeddings, was chosen by faithfulness (BENCHMARKS.md): the
`<|pad|>` row is never trained as an input (pads are masked); its only updates come from the tied LM head.
Integration: `n_steps` Gauss-Legendre points, all in one batch by default (`internal_batch_size`).
Completeness: the token attributions sum to F(x) − F(baseline) up to `delta`, reported with each one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from captum.attr import IntegratedGradients

from bot.spec import EARLIER
from explain.words import normalise, segment, word_scores

N_STEPS = 32
INTERNAL_BATCH_SIZE = 32
BASELINES = {  # what a text token's embedding is replaced by at the baseline
    "mean": "the mean token embedding",
    "pad": "the <|pad|> embedding",
    "zero": "the zero vector",
}
DEFAULT_BASELINE = "mean"


def describe_baseline(name: str, ngrams: bool = False) -> str:
    """The explanation's baseline in words; `ngrams`: the model adds n-gram logits, which the baseline leaves out."""
    return "every text token's embedding replaced by " + BASELINES[name] + (", and no n-gram logits" if ngrams else "")


@dataclass
class WordScore:
    word: str
    score: float  # normalised to [-1, 1] within this explanation, for display
    raw: float  # share of F(text) − F(baseline)
    start: int
    end: int
    read: bool = True  # False: cut by the model's length limit, never read (its score 0 means nothing)


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
    method: str = "IntegratedGradients(input embeddings, n-gram weights)"
    baseline: str = describe_baseline(DEFAULT_BASELINE)
    n_steps: int = N_STEPS
    internal_batch_size: int = INTERNAL_BATCH_SIZE
    reply: dict | None = field(default=None)
    earlier_turns: WordScore | None = None  # their share (word `EARLIER`), scaled with the words; None: none read

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def attributions(self) -> list[tuple[str, float | None]]:
        """(word, score) as a turn serves and logs them: the earlier turns first, as one item, when the classifier
        read any; then each word, None for a word it never read (cut by the length limit)."""
        words = [(w.word, round(w.score, 4) if w.read else None) for w in self.words]
        e = self.earlier_turns
        return [(e.word, round(e.score, 4)), *words] if e else words

    def top_words(self, k: int) -> list[int]:
        """Indices of the k words that raised F the most."""
        return sorted(range(len(self.words)), key=lambda i: -self.words[i].raw)[:k]


class IntentExplainer:
    """Built once per model; `explain(text)` is cheap enough to run on every turn."""

    def __init__(self, model, enc, n_steps: int = N_STEPS, internal_batch_size: int = INTERNAL_BATCH_SIZE,
                 baseline: str = DEFAULT_BASELINE):
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r} (known: {', '.join(BASELINES)})")
        self.model, self.enc, self.baseline = model, enc, baseline
        self.n_steps, self.internal_batch_size = n_steps, internal_batch_size
        self.embed = model.lm.get_input_embeddings()
        self.ig = IntegratedGradients(self._probability)

    def _probability(self, inputs_embeds, word_weights, attention_mask, bucket_ids):
        return self.model.intent_probs(None, attention_mask, inputs_embeds, bucket_ids, word_weights)

    def baseline_vector(self) -> torch.Tensor:
        w = self.embed.weight.detach()
        return {"mean": lambda: w.mean(0), "pad": lambda: w[self.enc.pad], "zero": lambda: torch.zeros_like(w[0])}[
            self.baseline]()

    def explain(self, text: str, intent: str | None = None, context: list[str] = ()) -> Explanation:
        return self.explain_batch([text], [intent], [list(context)])[0]

    def explain_batch(self, texts: list[str], intents: list[str | None] | None = None,
                      contexts: list[list[str]] | None = None) -> list[Explanation]:
        """Several texts in one Captum call (right-padded; GPT-2 is causal, so padding after a text
        changes nothing before it): the same attributions as one at a time, within float tolerance.
        `contexts[i]`: the earlier user texts text i was classified after (`Bot.earlier_turns`)."""
        self.model.eval()
        intents = intents or [None] * len(texts)
        segs = [segment(self.enc.tok, t, self.enc.max_length - 2) for t in texts]
        rows = [self.enc.classify(t, c) for t, c in zip(texts, contexts or [()] * len(texts))]  # as classified
        heads = [len(r) - len(s.token_ids) - 2 for r, s in zip(rows, segs)]  # tokens of the earlier turns
        if any(r[h + 1:h + 1 + len(s.token_ids)] != s.token_ids for r, s, h in zip(rows, segs, heads)):
            raise RuntimeError("the words' tokens differ from the classifier's input: the attributions would not fit")
        ids = torch.full((len(texts), max(map(len, rows))), self.enc.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        roles = torch.tensor([self.enc.user, self.enc.intent], device=ids.device)
        buckets = self.model.bucket_ids(ids, mask, per_token=True)
        if buckets is None:  # a model without n-grams: a zero bucket is padding, so they add nothing
            buckets = torch.zeros(*ids.shape, 1, dtype=torch.long, device=ids.device)
        with torch.no_grad():
            x = self.embed(ids)
            base = x.clone()
            vec = self.baseline_vector().to(x.dtype)
            text_tokens = (mask.bool() & ~torch.isin(ids, roles))  # every text token, earlier turns' included
            base[text_tokens] = vec  # role tokens and padding stay as they are
            w, w0 = torch.ones(ids.shape, device=ids.device), torch.zeros(ids.shape, device=ids.device)
            probs = self._probability(torch.cat([x, base]), torch.cat([w, w0]), torch.cat([mask, mask]),
                                      torch.cat([buckets, buckets]))
        predicted = probs[: len(texts)].argmax(-1).tolist()
        targets = [self.model.intents.index(it) if it else p for it, p in zip(intents, predicted)]
        (attr, attr_w), delta = self.ig.attribute(
            (x, w), baselines=(base, w0), target=targets, additional_forward_args=(mask, buckets),
            n_steps=self.n_steps, internal_batch_size=self.internal_batch_size * len(texts),
            return_convergence_delta=True)
        out = []
        for i, (text, seg, head, target) in enumerate(zip(texts, segs, heads, targets)):
            per_token = (attr[i].sum(-1) + attr_w[i]).detach().cpu()
            own = per_token[head + 1:head + len(seg.token_ids) + 1]
            raw = word_scores(seg, own.tolist())
            earlier = float(per_token[:head].sum())  # its role tokens score exactly 0
            scaled = normalise(raw + [earlier] if head else raw)
            words = [WordScore(w, sc, r, a, b, read) for w, sc, r, (a, b), read
                     in zip(seg.words, scaled, raw, seg.spans, seg.read)]
            earlier_turns = WordScore(EARLIER, scaled[-1], earlier, -1, -1) if head else None
            out.append(Explanation(text, self.model.intents[target], float(probs[i, target]),
                                   self.model.intents[predicted[i]], words, float(probs[len(texts) + i, target]),
                                   float(own.sum()) + earlier, abs(float(delta[i])), n_steps=self.n_steps,
                                   internal_batch_size=self.internal_batch_size,
                                   baseline=describe_baseline(self.baseline, self.model.ngrams is not None),
                                   earlier_turns=earlier_turns))
        return out
