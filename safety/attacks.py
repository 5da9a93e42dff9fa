"""Attack what is served: a TextAttack model wrapper around the bot's intent decision.

Every text an attack tries goes through the same input path as a served chat turn
(`safety.guard.read_message`: Unicode normalisation, control characters, length cap, PII redaction)
before the intent head sees it, so a defence placed in that path is measured like the model.
Importing this module imports TextAttack (seconds); only attacks and robust training do.
"""
from __future__ import annotations

import time

import numpy as np

from bot.classify import decide_each, predict, predict_proba
from safety.guard import MAX_CHARS, Rejected, read_message
from safety.recipes import check
from safety.resources import seeded, textattack

ta = textattack()


class OutOfTime(Exception):
    """Raised by the wrapper once its `deadline` has passed: the attack in progress stops there."""


class ServedIntentModel(ta.models.wrappers.ModelWrapper):
    """`wrapper(texts)` → intent probabilities, shape (len(texts), n_intents), as the served bot decides.

    Batched: texts are sorted by length and cut into batches of `batch_size`, each padded only to
    its own longest text. A message the bot refuses (empty after normalisation, over the length cap)
    gets no decision: uniform probabilities."""

    def __init__(self, model, enc, max_chars: int = MAX_CHARS, batch_size: int = 64, neighbours=None):
        self.model, self.enc, self.max_chars, self.batch_size = model, enc, max_chars, batch_size
        self.neighbours = neighbours  # the served distance rule (bot/neighbours.py), for `decision`
        self.deadline: float | None = None  # time.monotonic() after which queries raise OutOfTime

    def decision(self, text: str, settings):
        """The served bot's decision on `text` with every fallback rule, the distance rule included (the
        probabilities alone, which the attack's goal is about, do not have it); None if the bot refuses it."""
        read = self.served_text(text)
        if read is None:
            return None
        probs, dist = predict(self.model, self.enc, [read], self.neighbours)
        return decide_each(probs, self.intents, settings, dist, self.neighbours)[0]

    @property
    def intents(self) -> list[str]:
        return self.model.intents

    def served_text(self, text: str) -> str | None:
        """What the model reads for `text` (None: refused)."""
        try:
            return read_message(text, self.max_chars).text
        except Rejected:
            return None

    def __call__(self, text_input_list: list[str], **kwargs) -> np.ndarray:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise OutOfTime
        n = len(self.intents)
        out = np.full((len(text_input_list), n), 1.0 / n, dtype=np.float32)
        read = [(i, t) for i, raw in enumerate(text_input_list) if (t := self.served_text(raw)) is not None]
        read.sort(key=lambda it: len(it[1]))
        if read:
            probs = predict_proba(self.model, self.enc, [t for _, t in read], batch_size=self.batch_size)
            out[[i for i, _ in read]] = probs.numpy()
        return out


def build(name: str, wrapper: ServedIntentModel, query_budget: int | None = None):
    """A TextAttack `Attack` for recipe `name` (an offline one: see safety/recipes.py)."""
    recipe = check([name])[0]
    attack = getattr(ta.attack_recipes, recipe.cls).build(wrapper)
    if query_budget:
        attack.goal_function.query_budget = query_budget
    return attack


def attack_one(attack, text: str, label: int, seed: int):
    """One `AttackResult`; the recipes' random choices (Python's and NumPy's global generators) seeded."""
    with seeded(seed):
        return attack.attack(text, label)


def status(result) -> str:
    """"successful", "failed" or "skipped" (already misclassified: nothing to attack)."""
    return {"SuccessfulAttackResult": "successful", "FailedAttackResult": "failed",
            "SkippedAttackResult": "skipped", "MaximizedAttackResult": "successful"}[type(result).__name__]
