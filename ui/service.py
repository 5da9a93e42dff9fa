"""One chat turn, served: guard → redact → classify → fallback → reply → explain → log.

The model is loaded once per process. Model work (classification, generation, Captum hooks on the
shared embedding layer) runs under one lock; redaction and the audit store run outside it.
"""
from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from bot.dialogue import Bot, Conversation
from bot.model import model_version
from bot.store import AuditStore
from explain.attribution import N_STEPS, IntentExplainer
from safety.guard import MAX_CHARS, read_message
from safety.pii import redact_text, warm_up

MAX_SESSIONS = 1000


@dataclass
class Answer:
    """What the app and the API return for one turn (all text already redacted)."""

    turn_id: int
    text: str  # the message as the bot read it: guarded and redacted
    redacted: list[str]  # entity types replaced
    reply: str
    intent: str
    confidence: float
    fallback: bool
    fallback_reason: str | None
    ranking: list[tuple[str, float]]
    attributions: list[tuple[str, float]]  # (word, score in [-1, 1]) for the chosen intent
    explanation_delta: float
    model_version: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("turn_id", "text", "redacted", "reply", "intent", "confidence",
                                              "fallback", "fallback_reason", "ranking", "attributions",
                                              "explanation_delta", "model_version")}


class ChatService:
    def __init__(self, model_dir: str | Path, audit_db: str, device: str = "cpu", explain_steps: int = N_STEPS,
                 max_chars: int = MAX_CHARS):
        self.model_dir = Path(model_dir)
        self.bot = Bot(model_dir, device=device)
        self.explainer = IntentExplainer(self.bot.model, self.bot.enc, n_steps=explain_steps)
        self.store = AuditStore(audit_db, redact_text)
        self.version = model_version(model_dir, self.bot.card)
        self.max_chars = max_chars
        self.lock = threading.Lock()
        self.sessions: OrderedDict[str, Conversation] = OrderedDict()
        warm_up()

    @property
    def card(self) -> dict:
        return self.bot.card

    def conversation(self, session: str) -> Conversation:
        conv = self.sessions.setdefault(session, Conversation())
        self.sessions.move_to_end(session)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return conv

    def undo(self, session: str) -> None:
        conv = self.sessions.get(session)
        if conv and conv.turns:
            conv.turns.pop()

    def reset(self, session: str) -> None:
        self.sessions.pop(session, None)

    def respond(self, message: str, session: str, on_text=None) -> Answer:
        """Raises safety.guard.Rejected for a message the bot will not read."""
        red = read_message(message, self.max_chars)
        with self.lock:
            result = self.bot.turn(red.text, self.conversation(session), on_text=on_text)
            explanation = self.explainer.explain(red.text, result.intent)
        words = [(w.word, round(w.score, 4)) for w in explanation.words]
        turn_id = self.store.log(session=session, text=red.text, reply=result.reply, intent=result.intent,
                                 confidence=result.confidence, fallback=result.fallback,
                                 fallback_reason=result.fallback_reason, attributions=words,
                                 model_version=self.version)
        return Answer(turn_id, red.text, red.found, result.reply, result.intent, result.confidence, result.fallback,
                      result.fallback_reason, result.ranking[:5], words, explanation.delta, self.version)

    def respond_stream(self, message: str, session: str):
        """Yields the reply so far (str) while it is generated, then the Answer."""
        parts: queue.Queue = queue.Queue()
        box: dict = {}

        def work():
            try:
                box["answer"] = self.respond(message, session, on_text=parts.put)
            except BaseException as e:  # handed to the caller below
                box["error"] = e
            finally:
                parts.put(None)

        threading.Thread(target=work, daemon=True).start()
        while (part := parts.get()) is not None:
            yield part
        if "error" in box:
            raise box["error"]
        yield box["answer"]
