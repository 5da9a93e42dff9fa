"""Byte-level BPE pieces back to words.

A word is a run of letters/digits (with inner apostrophes: "I'm", "don't") or a single
punctuation mark, found on the original text, so unicode and punctuation survive as typed.
Each token is given to the word it overlaps most (a whitespace-only piece to the next word), so a
word's score is the sum of its tokens' and the words' scores add up to the tokens'.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)


@dataclass
class Segmented:
    token_ids: list[int]  # the text's tokens, as the classifier sees them (without role tokens)
    words: list[str]
    spans: list[tuple[int, int]]  # character span of each word in the text
    token_word: list[int]  # index of the word each token belongs to (-1 only when there are no words)

    @property
    def read(self) -> list[bool]:
        """Whether each word reached the model: words past the token limit were cut and score 0 unread."""
        seen = set(self.token_word)
        return [k in seen for k in range(len(self.words))]


def segment(tokenizer, text: str, max_tokens: int | None = None) -> Segmented:
    enc = tokenizer(" " + text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if max_tokens is not None:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    matches = list(_WORD.finditer(text))
    words, spans = [m.group() for m in matches], [m.span() for m in matches]
    token_word = []
    for start, end in offsets:
        start, end = start - 1, end - 1  # offsets count the leading space we added
        best, best_overlap = -1, 0
        for k, (ws, we) in enumerate(spans):
            overlap = min(end, we) - max(start, ws)
            if overlap > best_overlap:
                best, best_overlap = k, overlap
        if best < 0 and spans:  # a whitespace-only piece joins the word after it
            best = next((k for k, (ws, _) in enumerate(spans) if ws >= end), len(spans) - 1)
        token_word.append(best)
    return Segmented(list(ids), words, spans, token_word)


def word_scores(seg: Segmented, token_scores) -> list[float]:
    scores = [0.0] * len(seg.words)
    for k, w in enumerate(seg.token_word):
        if w >= 0:
            scores[w] += float(token_scores[k])
    return scores


def normalise(scores: list[float]) -> list[float]:
    """Scale to [-1, 1] by the largest magnitude (sign kept)."""
    top = max((abs(s) for s in scores), default=0.0)
    return [s / top if top else 0.0 for s in scores]
