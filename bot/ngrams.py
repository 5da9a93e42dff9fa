"""The words of a message as hashed character n-grams: features that survive rewording and misspelling.

Rasa's DIET feeds sparse word and character n-gram features beside its transformer's; here they feed the intent
head beside GPT-2's: `DialogueModel` adds `ngrams(buckets)` (an `nn.Embedding` from bucket to one logit per
intent, zero at the start) summed over the message's words to the head's logits. A word's n-grams are those of
"<word>" (lower case, with its boundaries) of `ORDERS` characters, plus the whole word, each hashed (CRC-32, the
same in every process) into `buckets` buckets. One typo changes only the few n-grams that cross it.

The feature space is the hash function: nothing is learnt from the examples to build it, so it is the same
under DP. Each word's buckets sit on its first token (`Buckets.of`), so an explanation that attributes to
tokens attributes the n-gram logits to the word they came from (explain/attribution.py).
"""
from __future__ import annotations

import functools
import zlib

import torch

ORDERS = (3, 4, 5)
PER_WORD = 24  # buckets kept per word (a word's first n-grams first; a 20-letter word has 56)


def word_buckets(word: str, buckets: int) -> list[int]:
    """The buckets of one word, 1 … buckets − 1 (0 is padding), at most `PER_WORD`."""
    w = f"<{word.lower()}>"
    grams = [w] + [w[i:i + n] for n in ORDERS for i in range(len(w) - n + 1)]
    return [1 + zlib.crc32(g.encode("utf-8")) % (buckets - 1) for g in dict.fromkeys(grams)][:PER_WORD]


class Buckets:
    """Token ids to per-token bucket ids, for one tokenizer: a word is a run of tokens, each new word starting
    at a token that begins with a space (GPT-2's byte-level BPE) or that follows a non-word token."""

    def __init__(self, tokenizer, buckets: int):
        self.buckets = buckets
        self.strings = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(
            list(range(len(tokenizer))))]

    @functools.lru_cache(maxsize=1 << 16)
    def _word(self, word: str) -> tuple[int, ...]:
        return tuple(word_buckets(word, self.buckets))

    def of(self, ids: list[int], start: int, end: int) -> list[list[int]]:
        """Buckets of each token in ids[start:end] (the message's tokens): a word's on its first token, none on
        the others or on a token that is not part of a word (space, punctuation)."""
        words: list[list] = []  # [position of the first token, the word so far]
        joined = False  # the previous token was part of a word this one may continue
        for k in range(start, end):
            s = self.strings[ids[k]]
            core = s.strip()
            if not core or not core[0].isalnum():
                joined = False
                continue
            if joined and not s[0].isspace():
                words[-1][1] += core
            else:
                words.append([k, core])
            joined = True
        out: list[list[int]] = [[] for _ in range(end - start)]
        for k, word in words:
            out[k - start] = list(self._word(word))
        return out


def pack(rows: list[list[list[int]]]) -> torch.Tensor:
    """Each row's buckets (`Buckets.of`) in one list, right-padded with 0: (B, M), M at least 1."""
    packed = [torch.tensor([b for token in row for b in token] or [0], dtype=torch.long) for row in rows]
    return torch.nn.utils.rnn.pad_sequence(packed, batch_first=True)


def batch(rows: list[list[list[int]]], width: int) -> torch.Tensor:
    """Per-token buckets of each row (`Buckets.of`, placed from position 0) as a (B, width, PER_WORD) tensor of
    bucket ids, 0 where there are none."""
    out = torch.zeros(len(rows), width, PER_WORD, dtype=torch.long)
    for i, row in enumerate(rows):
        for t, ids in enumerate(row):
            if ids:
                out[i, t, :len(ids)] = torch.tensor(ids)
    return out
