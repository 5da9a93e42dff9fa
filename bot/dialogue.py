"""A trained bot, ready to answer: its model, settings and replies. One chat turn is bot/turn.py."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from bot import model as models
from bot import neighbours
from bot.classify import decide_each, predict
from bot.data import Encoder, earlier
from bot.generate import fill, generate_replies, repetition, reply_scores, template_reply
from bot.spec import Settings, Turn
from bot.turn import Answer, turns

MAX_REPETITION = 0.2  # a generated reply that repeats more of its word 3-grams than this is replaced
# A generated reply must out-score the best authored response by this much (mean log-probability per token, nats)
# to be sent: greedy decoding maximises the model's own score, so "as high as" kept 73% of the demo model's
# generations and lost 6 ROUGE-L points to the authored responses (BENCHMARKS.md, "Replies").
GENERATE_MARGIN = 1.0


@dataclass
class Conversation:
    """The turns so far, oldest first."""

    turns: list[Turn] = field(default_factory=list)


class Bot:
    """A trained model directory, ready to answer."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", response_mode: str | None = None, seed: int = 0):
        self.model, self.tokenizer = models.load(model_dir, device)
        self.card = models.read_card(model_dir)
        # A card without `classify_context` is from a model trained before the classifier read earlier turns.
        self.settings = Settings(**{"classify_context": 0, **self.card.get("settings", {})})
        # the distance rule's index, if the model has one and its card does not switch the rule off
        self.neighbours = neighbours.load(model_dir) if self.settings.distance_quantile else None
        if response_mode:
            self.settings.response_mode = response_mode
        self.enc = Encoder(self.tokenizer, self.card.get("model", {}).get("max_length", 256))
        self.responses = {n: i["responses"] for n, i in self.card.get("intents", {}).items()}
        self.fallback_text = self.card.get("fallback", "Sorry, I didn't understand that.")
        self.placeholders = self.card.get("placeholders", {})
        self.rng = random.Random(seed)

    def classify(self, text: str):
        return self.classify_batch([text])[0]

    def classify_batch(self, texts: list[str], conversations: list[Conversation] | None = None):
        """One forward pass for several texts, each read after its conversation's `earlier_turns`, and one over
        those earlier turns for the distance rule (`bot.classify.predict`); each decision as `classify` would make
        it."""
        earlier_turns = [self.earlier_turns(c) for c in conversations] if conversations else None
        probs, distances = predict(self.model, self.enc, texts, self.neighbours, contexts=earlier_turns)
        return decide_each(probs, self.model.intents, self.settings, distances, self.neighbours)

    def earlier_turns(self, conversation: Conversation) -> list[str]:
        """The earlier user texts the classifier reads before the next message (`settings.classify_context` of
        them), oldest first."""
        return earlier(conversation.turns, self.settings.classify_context)

    def reply(self, text: str, intent: str, context: list[Turn], on_text=None) -> str:
        """The reply for a confident intent (see `replies`)."""
        out = self.replies([(text, intent, context)], [on_text])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def grounded(self, prompt: tuple[str, str, list[Turn]], extra: list[str] = ()) -> tuple[list[float], str | None]:
        """(scores, best): the model's own score (`reply_scores`) of each of `extra` + the intent's authored
        responses for this prompt, and the best authored response (unfilled), or None without any."""
        responses = self.responses.get(prompt[1], [])
        scores = reply_scores(self.model, self.enc, prompt, list(extra) + responses, self.settings.max_reply_tokens)
        own = scores[len(extra):]
        return scores, (responses[max(range(len(own)), key=own.__getitem__)] if own else None)

    def choose(self, prompt: tuple[str, str, list[Turn]], generated: str) -> tuple[str | None, str, str | None]:
        """Generate mode's rule for one generated reply: (reply, "generated", best) if the model scores it at
        least `GENERATE_MARGIN` above the intent's best authored response and it does not loop; else (that
        response, "grounded", best), else (None, "template", None). `best`: the best-scored authored response."""
        scores, best = self.grounded(prompt, [generated] if generated else [])
        if generated and repetition(generated) <= MAX_REPETITION and (
                best is None or scores[0] >= max(scores[1:]) + GENERATE_MARGIN):
            return generated, "generated", best
        return (best, "grounded", best) if best is not None else (None, "template", None)

    def replies(self, prompts: list[tuple[str, str, list[Turn]]], on_texts: list | None = None,
                sources: list | None = None) -> list:
        """Replies for several `(text, intent, context)`. Template mode: one of the intent's responses at random.
        Generate mode: generated in one batch, then kept only if the model scores it clearly above the best of
        the intent's authored responses and it does not loop (`choose`); otherwise that best response
        (LM-scored selection), else the templates. `on_texts[i](reply_so_far)` streams reply i; if it
        raises, item i's result is that exception. `sources`, when given, receives where each reply came from:
        "generated", "grounded" or "template"."""
        out: list = [None] * len(prompts)
        source = ["template"] * len(prompts)
        if self.settings.response_mode == "generate" and prompts:
            streams = [(lambda so_far, f=f: f(fill(so_far, self.placeholders))) if f else None
                       for f in (on_texts or [None] * len(prompts))]
            for i, g in enumerate(generate_replies(self.model, self.enc, prompts, self.settings.max_reply_tokens,
                                                   on_texts=streams)):
                if isinstance(g, BaseException):
                    out[i] = g
                    continue
                text, source[i], _ = self.choose(prompts[i], g)
                out[i] = fill(text, self.placeholders) if text else None
        if sources is not None:
            sources[:] = source
        return [o if o is not None else template_reply(self.responses.get(intent, []), self.placeholders, self.rng)
                or self.fallback_text for o, (_, intent, _) in zip(out, prompts)]

    def turn(self, text: str, conversation: Conversation | None = None, on_text=None) -> Answer:
        """One turn (bot/turn.py) on a text already read, without an explanation; kept in `conversation`."""
        conversation = conversation if conversation is not None else Conversation()
        answer = turns(self, [text], [conversation], on_texts=[on_text])[0]
        if isinstance(answer, BaseException):
            raise answer
        conversation.turns.append(answer.as_turn())
        return answer
