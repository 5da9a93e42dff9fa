"""TextAttack augmenters as views of a training record (`robustness.augment` in the bot file).

Each step, with chance `robustness.augment_share`, a record is seen through one augmenter picked
at random from the list; that view replaces the record for the step (bot/train.py), so under DP a
record still gives one clipped gradient. Every augmenter changes only the record's own words or
swaps in WordNet synonyms (public): nothing from other records enters a view.

Names (also the bot file's vocabulary, `bot.spec.AUGMENTERS`):
  charswap  TextAttack's CharSwapAugmenter: swap, substitute, delete or insert a character
  typo      keyboard typos as in Pruthi et al. 2019 (neighbour swap, drop, insert, QWERTY neighbour)
  deletion  TextAttack's DeletionAugmenter: drop a word
  swap      TextAttack's SwapAugmenter: swap two words
  synonym   TextAttack's WordNetAugmenter: a WordNet synonym
  eda       one of EDA's four operations (Wei & Zou 2019): synonym, deletion, swap, synonym insertion
Where an augmenter leaves stop words alone, it does so in any case (TextAttack's check is
case-sensitive: "I" would become "iodine").
Synonym-based views (synonym, eda) follow Python's string hashing in TextAttack's WordNet lookup:
set PYTHONHASHSEED for runs that must repeat exactly.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from bot.spec import AUGMENTERS
from safety.resources import seeded, textattack

PCT_WORDS = 0.1  # share of a text's words an augmenter changes (at least one)
TYPO_PCT_WORDS = 0.2


class _OneOf:
    """EDA with one output: one of its operations, picked with the (seeded) global generator; unlike
    EasyDataAugmenter.augment it does not go through a set, so the pick repeats for a seed."""

    def __init__(self, eda):
        self.parts = [eda.synonym_replacement, eda.random_deletion, eda.random_swap, eda.random_insertion]

    def augment(self, text: str) -> list[str]:
        return random.choice(self.parts).augment(text)


def _typo(ta, pct: float):
    t, c = ta.transformations, ta.constraints.pre_transformation
    edge = dict(random_one=True, skip_first_char=True, skip_last_char=True)
    return ta.augmentation.Augmenter(
        transformation=t.CompositeTransformation([t.WordSwapNeighboringCharacterSwap(**edge),
                                                  t.WordSwapRandomCharacterDeletion(**edge),
                                                  t.WordSwapRandomCharacterInsertion(**edge), t.WordSwapQWERTY(**edge)]),
        constraints=[c.RepeatModification(), c.StopwordModification(), c.MinWordLength(4)],
        pct_words_to_swap=pct, transformations_per_example=1)


def _any_case_stopwords(ta, augmenter):
    """TextAttack's stop-word constraint compares case-sensitively, so a capitalised "I" or "The" is
    fair game ("I" → "iodine" by WordNet); make it leave stop words alone in any case."""
    stop = ta.constraints.pre_transformation.StopwordModification
    for aug in getattr(augmenter, "parts", [augmenter]):
        aug.pre_transformation_constraints = [
            stop(stopwords={v for w in c.stopwords for v in (w, w.capitalize(), w.upper())}) if isinstance(c, stop) else c
            for c in aug.pre_transformation_constraints]
    return augmenter


_BUILD = {
    "charswap": ("a character swapped, substituted, deleted or inserted",
                 lambda ta: ta.augmentation.recipes.CharSwapAugmenter(pct_words_to_swap=PCT_WORDS, transformations_per_example=1)),
    "typo": (f"keyboard typos in {TYPO_PCT_WORDS:.0%} of the words (at least one)", lambda ta: _typo(ta, TYPO_PCT_WORDS)),
    "deletion": ("a word deleted",
                 lambda ta: ta.augmentation.recipes.DeletionAugmenter(pct_words_to_swap=PCT_WORDS, transformations_per_example=1)),
    "swap": ("two words swapped",
             lambda ta: ta.augmentation.recipes.SwapAugmenter(pct_words_to_swap=PCT_WORDS, transformations_per_example=1)),
    "synonym": ("a WordNet synonym",
                lambda ta: ta.augmentation.recipes.WordNetAugmenter(pct_words_to_swap=PCT_WORDS, transformations_per_example=1)),
    "eda": ("one EDA operation (synonym, deletion, swap or synonym insertion)",
            lambda ta: _OneOf(ta.augmentation.recipes.EasyDataAugmenter(pct_words_to_swap=PCT_WORDS, transformations_per_example=4))),
}
assert tuple(_BUILD) == AUGMENTERS


@dataclass
class Augment:
    name: str
    description: str
    augmenter: object

    def __call__(self, text: str, seed: int) -> str | None:
        """One augmented version of `text` (None when the augmenter finds nothing to change)."""
        with seeded(seed):
            out = self.augmenter.augment(text)
        return out[0] if out else None


@functools.cache
def make(name: str) -> Augment:
    if name not in _BUILD:
        raise ValueError(f"unknown augmenter '{name}' (known: {', '.join(AUGMENTERS)})")
    description, build = _BUILD[name]
    ta = textattack()
    return Augment(name, description, _any_case_stopwords(ta, build(ta)))


class AugmentView:
    """A `bot.train.View`: with chance `share`, the record seen through one of `names`."""

    def __init__(self, names: list[str], share: float):
        self.names, self.share = list(names), share
        self.augmenters = [make(n) for n in names]

    def start_epoch(self, trainer) -> None:
        pass

    def __call__(self, index: int, record, rng: random.Random) -> str | None:
        if rng.random() >= self.share:
            return None
        return rng.choice(self.augmenters)(record.text, rng.getrandbits(32))

    def describe(self) -> dict:
        return {"view": "augment", "augmenters": self.names, "share": self.share}

    def may_keep(self, epoch: int) -> bool:
        return True
