"""Records and their token sequences.

A record is one distinct user utterance with its intent and, when the bot has one, the reply and
the conversation before it. Sequences:

    classify:  <|user|> text<|intent|>                         (intent head reads the last token)
    reply:     [<|user|> u<|bot|> b]* <|user|> text<|intent|> name<|bot|> reply<|endoftext|>
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bot.spec import BotSpec, Turn, normalize
from bot.tokenizer import BOT, INTENT, USER


@dataclass
class Record:
    text: str
    intent: str
    reply: str | None = None
    context: list[Turn] = field(default_factory=list)


def record_key(text: str, seed: int, purpose: str) -> float:
    """A number in [0, 1) that depends only on this utterance (normalised), the seed and the purpose: the
    validation split and the reply a record trains on are decided per record, so adding or removing one
    utterance never moves another (the unit the DP guarantee is about)."""
    h = hashlib.blake2b(normalize(text).encode(), key=f"{seed}:{purpose}".encode()[:64], digest_size=8)
    return int.from_bytes(h.digest(), "big") / 2 ** 64


def records(spec: BotSpec, dialogues: bool = True, seed: int = 0) -> list[Record]:
    """One record per distinct utterance (normalised): each example, with a reply picked from its intent's
    responses by a keyed hash of its text; with `dialogues`, a dialogue turn that repeats an example gives
    that record its conversation and reply instead of adding a second record, and other intent-labelled
    turns become records of their own."""
    out: dict[str, Record] = {}
    for intent in spec.intents.values():
        for ex in intent.examples:
            key = normalize(ex.text)
            if key in out:
                continue
            reply = (intent.responses[int(record_key(ex.text, seed, "reply") * len(intent.responses))]
                     if intent.responses else None)
            out[key] = Record(ex.text, intent.name, reply)
    if dialogues:  # as many earlier turns as the reply prompt or the classifier reads (each cuts its own)
        n = max(spec.settings.context_turns, spec.settings.classify_context)
        merged = set()
        for dialogue in spec.dialogues:
            for k, turn in enumerate(dialogue):
                key = normalize(turn.user)
                if not turn.intent or key in merged or (key in out and out[key].intent != turn.intent):
                    continue  # one utterance, one record: the example's label wins
                merged.add(key)
                context = dialogue[max(0, k - n):k]
                if key in out:
                    out[key] = Record(out[key].text, out[key].intent, turn.bot, context)
                else:
                    out[key] = Record(turn.user, turn.intent, turn.bot, context)
    return list(out.values())


def split(items: list[Record], fraction: float, seed: int,
          keep_one: bool = True) -> tuple[list[Record], list[Record]]:
    """(train, held_out): a record is held out when the keyed hash of its text falls below `fraction`, so
    the same utterance always lands on the same side. `keep_one` moves an intent's records back to train
    when all of them were held out (that decision depends on the intent's other records: the DP trainer
    passes False)."""
    train, held = [], []
    for r in items:
        (held if record_key(r.text, seed, "split") < fraction else train).append(r)
    if keep_one:
        trained = {r.intent for r in train}
        back = [r for r in held if r.intent not in trained]
        train += back
        held = [r for r in held if r.intent in trained]
    return train, held


def corpus(spec: BotSpec) -> list[str]:
    """All of the bot's own text: what the offline tokenizer and LM pre-training see."""
    texts = [e.text for e in spec.examples]
    texts += [r for i in spec.intents.values() for r in i.responses]
    texts += [t for d in spec.dialogues for turn in d for t in (turn.user, turn.bot)]
    return texts + [spec.fallback]


BUNDLED_OUTLIERS = Path(__file__).parent / "demo" / "public_sgd_turns.txt"  # bot/demo/SOURCE.md


def read_corpus(path: str | Path) -> list[str]:
    """Lines of a .txt, the text column of a CSV, or all of a bot file's own text (`corpus`)."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        from bot.spec import load_bot
        return corpus(load_bot(path)[0])
    if path.suffix == ".csv":
        return [text for text, _ in _csv_rows(path)]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_labelled(path: str | Path) -> list[tuple[str, str]]:
    """(text, intent) of each row of a CSV with a text column (as `read_corpus`) and an 'intent' (or 'category')
    column."""
    return [(text, label) for text, label in _csv_rows(Path(path), labelled=True)]


def _csv_rows(path: Path, labelled: bool = False) -> list[tuple[str, str | None]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    col = next((c for c in ("text", "utterance", "instruction") if rows and c in rows[0]), None)
    if col is None:
        raise ValueError(f"{path}: a text corpus in CSV needs a 'text' column")
    label = next((c for c in ("intent", "category") if rows and c in rows[0]), None)
    if labelled and label is None:
        raise ValueError(f"{path}: labelled stand-in data in CSV needs an 'intent' column beside '{col}'")
    return [(r[col].strip(), r[label].strip() if label else None) for r in rows if r[col].strip()]


def outlier_texts(spec: BotSpec, near: float = 0.5) -> tuple[list[str], int]:
    """(texts, dropped): the public outlier corpus (`training.outlier_corpus`) without the texts that look like
    one of the bot's own examples (word TF-IDF cosine ≥ `near`: an outlier corpus must not teach the bot to
    refuse what it should answer), then the bot file's `out_of_scope:` examples, repeated so they are at least
    a fifth of what outlier exposure draws from. Empty when outlier exposure is off."""
    t = spec.training
    own = [e.text for e in spec.out_of_scope]
    if t.outlier_weight <= 0:
        return [], 0
    public = [] if t.outlier_corpus.lower() == "none" else read_corpus(t.outlier_corpus or BUNDLED_OUTLIERS)
    dropped = 0
    if public and spec.examples:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([e.text for e in spec.examples] + public)
        sim = vec.transform(public) @ vec.transform([e.text for e in spec.examples]).T
        keep = sim.max(axis=1).toarray().ravel() < near
        dropped = int((~keep).sum())
        public = [p for p, k in zip(public, keep) if k]
    if own:
        own = own * max(1, len(public) // (4 * len(own)))
    return public + own, dropped


def earlier(turns: Sequence[Turn], n: int) -> list[str]:
    """The user texts of the last `n` turns, oldest first: what the classifier reads before the next message."""
    return [t.user for t in turns[-n:]] if n else []


class Encoder:
    """Builds token id sequences; user text can never smuggle in role tokens."""

    def __init__(self, tokenizer, max_length: int):
        self.tok = tokenizer
        self.max_length = max_length
        self.user, self.bot, self.intent = (tokenizer.convert_tokens_to_ids(t) for t in (USER, BOT, INTENT))
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def words(self, text: str) -> list[int]:
        return self.tok.encode(" " + text, add_special_tokens=False, split_special_tokens=True)

    def classify(self, text: str, context: Sequence[str] = ()) -> list[int]:
        """The classifier's input: `<|user|> earlier <|user|> text <|intent|>`, where `context` holds earlier user
        texts, oldest first; the oldest are dropped whole to leave room for the message, which is never cut for them."""
        own = [self.user] + self.words(text)[: self.max_length - 2] + [self.intent]
        return self.context_ids(context, self.max_length - len(own)) + own

    def context_ids(self, context: Sequence[str], room: int) -> list[int]:
        """`<|user|> turn` for each earlier user text that fits in `room` tokens, newest kept first."""
        out: list[int] = []
        for t in reversed(context):
            ids = [self.user] + self.words(t)
            if len(out) + len(ids) > room:
                break
            out = ids + out
        return out

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

    def joint(self, text: str, intent: str, reply: str | None, max_reply_tokens: int) -> tuple[list[int], list[int], int]:
        """(ids, labels, intent position) of ONE sequence for both heads (the DP trainer): the classifier's
        prefix exactly as served (`classify`, never cut from the left), then the intent name, <|bot|> and the
        reply, cut to fit; without a reply, or without room for one, just the prefix."""
        prefix = self.classify(text)
        head = prefix + self.words(intent) + [self.bot]
        room = self.max_length - len(head)
        if reply is None or room < 1:
            return prefix, [-100] * len(prefix), len(prefix) - 1
        target = (self.words(reply) + [self.eos])[:min(max_reply_tokens, room)]
        return head + target, [-100] * len(head) + target, len(prefix) - 1

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
