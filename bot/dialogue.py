"""One chat turn: classify → fallback → reply. Callers above the core may add steps around it
(guard and redact before, explain and log after) by passing plain callables."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

from bot import model as models
from bot.classify import decide, predict_proba
from bot.data import Encoder
from bot.generate import fill, generate_reply, template_reply
from bot.spec import Settings, Turn


@dataclass
class TurnResult:
    text: str
    reply: str
    intent: str
    confidence: float
    fallback: bool
    fallback_reason: str | None
    confidence_threshold: float
    ambiguity_threshold: float
    ranking: list[tuple[str, float]]
    response_mode: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Conversation:
    turns: list[Turn] = field(default_factory=list)


class Bot:
    """A trained model directory, ready to answer."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", response_mode: str | None = None, seed: int = 0):
        self.model, self.tokenizer = models.load(model_dir, device)
        self.card = models.read_card(model_dir)
        self.settings = Settings(**self.card.get("settings", {}))
        if response_mode:
            self.settings.response_mode = response_mode
        self.enc = Encoder(self.tokenizer, self.card.get("model", {}).get("max_length", 256))
        self.responses = {n: i["responses"] for n, i in self.card.get("intents", {}).items()}
        self.fallback_text = self.card.get("fallback", "Sorry, I didn't understand that.")
        self.placeholders = self.card.get("placeholders", {})
        self.rng = random.Random(seed)

    def classify(self, text: str):
        return self.classify_batch([text])[0]

    def classify_batch(self, texts: list[str]):
        """One forward pass for several texts; each decision as `classify` would make it."""
        return [decide(p, self.model.intents, self.settings) for p in predict_proba(self.model, self.enc, texts)]

    def reply(self, text: str, intent: str, context: list[Turn], on_text=None) -> str:
        """The reply for a confident intent; an empty generation falls back to the templates.
        `on_text(reply_so_far)` is called as generated tokens arrive."""
        if self.settings.response_mode == "generate":
            generated = generate_reply(self.model, self.enc, text, intent, context, self.settings.max_reply_tokens,
                                       on_text=(lambda so_far: on_text(fill(so_far, self.placeholders)))
                                       if on_text else None)
            if generated:
                return fill(generated, self.placeholders)
        return template_reply(self.responses.get(intent, []), self.placeholders, self.rng) or self.fallback_text

    def turn(self, text: str, conversation: Conversation | None = None, on_text=None, decision=None) -> TurnResult:
        """One turn; `decision` when the text was already classified (in a batch with others)."""
        conversation = conversation if conversation is not None else Conversation()
        decision = decision or self.classify(text)
        context = conversation.turns[-self.settings.context_turns:] if self.settings.context_turns else []
        reply = (fill(self.fallback_text, self.placeholders) if decision.fallback
                 else self.reply(text, decision.intent, context, on_text))
        conversation.turns.append(Turn(text, reply, None if decision.fallback else decision.intent))
        return TurnResult(text, reply, decision.intent, decision.confidence, decision.fallback, decision.reason,
                          decision.confidence_threshold, decision.ambiguity_threshold, decision.ranking,
                          self.settings.response_mode)
