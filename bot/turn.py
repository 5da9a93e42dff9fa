"""One chat turn, on one page: read → classify → fallback → reply → explain, for several messages at once.

`turn` takes one message top to bottom; `turns` does the same for messages already read, in one batch (one
classification pass, one batch of generated replies, one explanation call), each as it would be alone.

The core never imports safety/ or explain/, so both ends come in from ui/ as plain callables:
- `read(message)` → what the bot reads of a message: `.text` (the served text: normalised, PII redacted) and
  `.found` (the entity types redacted). ui/ passes `safety.guard.read_message`, which raises
  `safety.guard.Rejected` for a message the bot will not read.
- `explain(texts, intents, earlier_turns)` → one explanation per text, of that intent as the classifier read it
  (after those earlier user texts), each with `.delta` and `.attributions()`. ui/ passes
  `explain.attribution.IntentExplainer.explain_batch`.

Nothing here keeps a conversation: each message comes with its conversation so far, and the caller keeps the new
turn (`Answer.as_turn`: `candor chat`) or logs it (ui/service.py: the audit store is the conversation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from bot.classify import Decision
from bot.generate import fill
from bot.spec import Turn

if TYPE_CHECKING:
    from bot.dialogue import Bot, Conversation


@dataclass(kw_only=True)
class Answer(Decision):
    """One turn's result, the only one: the decision (`Decision`'s fields: intent, confidence, ranking, fallback,
    fallback_reason, thresholds, distance), the reply, and the explanation. All of its text is served text."""

    text: str  # the served text: the message as the bot read it (guarded, PII redacted)
    redacted_types: list[str] = field(default_factory=list)  # the entity types redaction replaced, in text order
    reply: str
    response_mode: str
    explanation: Any = None  # what `explain` returned for this turn (explain.attribution.Explanation); None: none
    turn_id: int | None = None  # set by whoever logs the turn (ui/service.py)
    model_version: str | None = None  # likewise: `<bot>@<weights SHA-256>`
    explained: Any = field(default=None, repr=False, compare=False)  # set when it is explained after the reply

    @property
    def attributions(self) -> list[tuple[str, float | None]]:
        """(word, score in [-1, 1]) for the chosen intent, the earlier turns first as one item when read; None: a
        word never read. Empty without an explanation."""
        return self.explanation.attributions() if self.explanation is not None else []

    @property
    def explanation_delta(self) -> float | None:
        return self.explanation.delta if self.explanation is not None else None

    def as_turn(self) -> Turn:
        """The turn a conversation keeps (a fallback keeps no intent)."""
        return Turn(self.text, self.reply, None if self.fallback else self.intent)

    def to_dict(self) -> dict:
        """What the API returns."""
        return {"turn_id": self.turn_id, "text": self.text, "redacted_types": self.redacted_types, "reply": self.reply,
                "intent": self.intent, "confidence": self.confidence, "fallback": self.fallback,
                "fallback_reason": self.fallback_reason, "ranking": self.ranking, "attributions": self.attributions,
                "explanation_delta": self.explanation_delta, "model_version": self.model_version,
                "distance": self.distance, "distance_threshold": self.distance_threshold}


def turn(bot: Bot, message: str, conversation: Conversation, read: Callable, explain: Callable | None = None,
         on_text: Callable | None = None) -> Answer:
    """One message, top to bottom: read it, then the rest of the turn (`turns`). Raises what `read` raises for a
    message the bot will not read, and what `on_text` raises."""
    served = read(message)
    out = turns(bot, [served.text], [conversation], [served.found], explain=explain, on_texts=[on_text])[0]
    if isinstance(out, BaseException):
        raise out
    return out


def turns(bot: Bot, texts: list[str], conversations: list[Conversation], redacted_types: list[list[str]] | None = None,
          explain: Callable | None = None, on_texts: list | None = None) -> list:
    """Several messages, already read (`texts`: served text), each after its conversation so far: one `Answer`
    each, the same as one at a time. `on_texts[i](reply_so_far)` streams reply i (generate mode); if it raises,
    item i's result is that exception (and it is not explained)."""
    on_texts = on_texts or [None] * len(texts)
    # classify and fall back (bot/classify.py: low confidence, unfamiliar, ambiguous): one forward pass, each
    # message read after the earlier user turns the classifier reads
    decisions = bot.classify_batch(texts, conversations)
    # reply: the answered messages in one batch, each after its last `context_turns` turns; a fallback gets the
    # bot's fallback text
    k = bot.settings.context_turns
    answered = [i for i, d in enumerate(decisions) if not d.fallback]
    replies = dict(zip(answered, bot.replies(
        [(texts[i], decisions[i].intent, conversations[i].turns[-k:] if k else []) for i in answered],
        [on_texts[i] for i in answered])))
    out: list = [replies.get(i, fill(bot.fallback_text, bot.placeholders)) for i in range(len(texts))]
    # explain: the decided intent of each message that got its reply, in one call, as the classifier read it
    done = [i for i, reply in enumerate(out) if not isinstance(reply, BaseException)]
    explanations = dict(zip(done, explain([texts[i] for i in done], [decisions[i].intent for i in done],
                                          [bot.earlier_turns(conversations[i]) for i in done]))) \
        if explain and done else {}
    for i in done:
        out[i] = Answer(**vars(decisions[i]), text=texts[i], reply=out[i], response_mode=bot.settings.response_mode,
                        redacted_types=list(redacted_types[i]) if redacted_types else [],
                        explanation=explanations.get(i))
    return out
