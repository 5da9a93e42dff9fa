"""Records and their token sequences.

A record is one user utterance with its intent and, when the bot has one, the reply and the
conversation before it. Sequences:

    classify:  <|user|> text<|intent|>                         (intent head reads the last token)
    reply:     [<|user|> u<|bot|> b]* <|user|> text<|intent|> name<|bot|> reply<|endoftext|>
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from bot.spec import BotSpec, Turn
from bot.tokenizer import BOT, INTENT, USER


@dataclass
class Record:
    text: str
    intent: str
    reply: str | None = None
    context: list[Turn] = field(default_factory=list)


def records(spec: BotSpec) -> list[Record]:
    """One record per example (replies drawn round-robin from its intent) plus each dialogue turn."""
    out = []
    for intent in spec.intents.values():
        for k, ex in enumerate(intent.examples):
            reply = intent.responses[k % len(intent.responses)] if intent.responses else None
            out.append(Record(ex.text, intent.name, reply))
    n = spec.settings.context_turns
    for dialogue in spec.dialogues:
        for k, turn in enumerate(dialogue):
            if turn.intent:
                out.append(Record(turn.user, turn.intent, turn.bot, dialogue[max(0, k - n):k]))
    return out


def split(items: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Stratified split by intent: (train, held_out). Intents with one example stay in train."""
    by_intent: dict[str, list[Record]] = {}
    for r in items:
        by_intent.setdefault(r.intent, []).append(r)
    rng = random.Random(seed)
    train, held = [], []
    for name in sorted(by_intent):
        group = by_intent[name][:]
        rng.shuffle(group)
        k = int(round(len(group) * fraction)) if len(group) > 1 else 0
        held += group[:k]
        train += group[k:]
    return train, held


def corpus(spec: BotSpec) -> list[str]:
    """All of the bot's own text: what the offline tokenizer and LM pre-training see."""
    texts = [e.text for e in spec.examples]
    texts += [r for i in spec.intents.values() for r in i.responses]
    texts += [t for d in spec.dialogues for turn in d for t in (turn.user, turn.bot)]
    return texts + [spec.fallback]


class Encoder:
    """Builds token id sequences; user text can never smuggle in role tokens."""

    def __init__(self, tokenizer, max_length: int):
        self.tok = tokenizer
        self.max_length = max_length
        self.user, self.bot, self.intent = (tokenizer.convert_tokens_to_ids(t) for t in (USER, BOT, INTENT))
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def words(self, text: str) -> list[int]:
        return self.tok.encode(" " + text, add_special_tokens=False, split_special_tokens=True)

    def classify(self, text: str) -> list[int]:
        return [self.user] + self.words(text)[: self.max_length - 2] + [self.intent]

    def prompt(self, text: str, intent: str, context: list[Turn] = (), budget: int = 0) -> list[int]:
        """Reply prompt; the oldest context turns are dropped to leave `budget` tokens for the reply."""
        head = self.classify(text) + self.words(intent) + [self.bot]
        turns = [[self.user] + self.words(t.user) + [self.bot] + self.words(t.bot) for t in context]
        while turns and sum(map(len, turns)) + len(head) + budget > self.max_length:
            turns.pop(0)
        ids = [i for t in turns for i in t] + head
        return ids[-(self.max_length - budget):] if budget < self.max_length else ids

    def reply(self, r: Record, max_reply_tokens: int) -> tuple[list[int], list[int]]:
        """(input ids, labels): loss only on the reply and its end token."""
        target = (self.words(r.reply) + [self.eos])[:max_reply_tokens]
        prompt = self.prompt(r.text, r.intent, r.context, budget=len(target))
        target = target[: self.max_length - len(prompt)]
        return prompt + target, [-100] * len(prompt) + target

    def lm(self, text: str) -> list[int]:
        return (self.words(text) + [self.eos])[: self.max_length]

    def pad_batch(self, seqs: list[list[int]], labels: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        lab = torch.full((len(seqs), width), -100, dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, : len(s)] = torch.tensor(s)
            mask[k, : len(s)] = 1
            lab[k, : len(s)] = torch.tensor(labels[k] if labels else s)
        return {"input_ids": ids, "attention_mask": mask, "labels": lab}
