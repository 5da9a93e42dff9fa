"""One chat turn, served: guard → redact → classify → fallback → reply → explain → log.

The model is loaded once per process. Turns that arrive together are batched (`Batcher`): the turns
that queued while the previous batch ran (at most `MAX_BATCH`; none waits for company) are classified in
one forward pass, their replies generated in one batch (generate mode) and explained in one Captum call.
All model work runs on the batcher's one thread (Captum hooks the shared embedding layer); redaction and
the audit store run in each request's own thread.

Conversations live in the audit store, not in the process: each turn reads its session's turns from
the store, and its audit row is the new turn, so replicas on one database act as one bot.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bot.dialogue import Bot, Conversation
from bot.model import model_version
from bot.spec import Turn
from bot.store import AuditStore
from explain.attribution import N_STEPS, IntentExplainer
from safety.guard import MAX_CHARS, read_message
from safety.pii import UNCHECKED, redact_text, warm_up

MAX_BATCH = 8  # turns in one model batch
MAX_TURNS = 50  # a conversation keeps its newest turns (generation reads the last few)


class Batcher:
    """Collects work items from many threads and runs them in batches on one worker thread.

    `submit(item)` blocks until `run(items)` has returned the item's result (or raised for it):
    `run` returns one result per item, an exception instance to raise in that item's thread."""

    def __init__(self, run, max_batch: int = MAX_BATCH):
        self.run, self.max_batch = run, max_batch
        self.items: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, daemon=True, name="candor-batcher").start()

    def submit(self, item):
        done, box = threading.Event(), {}
        self.items.put((item, done, box))
        done.wait()
        if isinstance(box["result"], BaseException):
            raise box["result"]
        return box["result"]

    def _work(self) -> None:
        while True:  # a batch: the first turn, then what queued meanwhile (no added latency for a lone user)
            batch = [self.items.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.items.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.run([item for item, _, _ in batch])
            except BaseException as e:  # noqa: BLE001 - every waiting thread gets the error
                results = [e] * len(batch)
            for (_, done, box), result in zip(batch, results):
                box["result"] = result
                done.set()


class Cancelled(Exception):
    """The client went away (its tab closed): the turn stops and nothing is logged."""


def _stream(on_text, cancel):
    """The reply-so-far callback of one turn; raises Cancelled between tokens once `cancel` is set."""
    if on_text is None and cancel is None:
        return None

    def text_out(so_far: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if on_text:
            on_text(so_far)
    return text_out


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
    attributions: list[tuple[str, float | None]]  # (word, score in [-1, 1]) for the chosen intent; None: not read
    explanation_delta: float
    model_version: str
    distance: float | None = None  # to the training examples (bot/neighbours.py); None: the model has no index
    distance_threshold: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("turn_id", "text", "redacted", "reply", "intent", "confidence",
                                              "fallback", "fallback_reason", "ranking", "attributions",
                                              "explanation_delta", "model_version", "distance",
                                              "distance_threshold")}


class ChatService:
    def __init__(self, model_dir: str | Path, audit_db: str, device: str = "cpu", explain_steps: int = N_STEPS,
                 max_chars: int = MAX_CHARS):
        self.model_dir = Path(model_dir)
        self.bot = Bot(model_dir, device=device)
        self.explainer = IntentExplainer(self.bot.model, self.bot.enc, n_steps=explain_steps)
        self.store = AuditStore(audit_db, redact_text, cacheable=lambda redacted: f"<{UNCHECKED}>" not in redacted)
        self.version = model_version(model_dir, self.bot.card)
        self.max_chars = max_chars
        self.batcher = Batcher(self._model_batch)
        warm_up()

    @property
    def card(self) -> dict:
        return self.bot.card

    def conversation(self, session: str) -> Conversation:
        """The session's turns as the store has them (another replica may have written the last one)."""
        return Conversation([Turn(*t) for t in self.store.conversation(session, keep=MAX_TURNS)])

    def keep(self, session: str, turns: int) -> None:
        """Keep the first `turns` turns of a conversation (undo and retry: the turns before the one undone)."""
        self.store.keep_turns(session, turns)

    def reset(self, session: str) -> None:
        self.store.keep_turns(session, 0)

    def respond(self, message: str, session: str, on_text=None, cancel: threading.Event | None = None) -> Answer:
        """Raises safety.guard.Rejected for a message the bot will not read, Cancelled once `cancel` is set."""
        red = read_message(message, self.max_chars)
        conv = self.conversation(session)
        result, explanation = self.batcher.submit((red.text, conv, on_text, cancel))
        words = [(w.word, round(w.score, 4) if w.read else None) for w in explanation.words]  # None: never read
        if explanation.context:  # the earlier turns the classifier read, as one item before the words
            words.insert(0, (explanation.context.word, round(explanation.context.score, 4)))
        turn_id = self.store.log(session=session, text=red.text, reply=result.reply, intent=result.intent,
                                 confidence=result.confidence, fallback=result.fallback,
                                 fallback_reason=result.fallback_reason, attributions=words,
                                 model_version=self.version)
        return Answer(turn_id, red.text, red.found, result.reply, result.intent, result.confidence, result.fallback,
                      result.fallback_reason, result.ranking[:5], words, explanation.delta, self.version,
                      result.distance, result.distance_threshold)

    def _model_batch(self, items: list) -> list:
        """Model work for several turns: one classification pass, each reply, one Captum call.
        Returns (TurnResult, Explanation) per item, or the exception for that item."""
        out: list = [None] * len(items)
        live = [i for i, (_, _, _, cancel) in enumerate(items) if not (cancel is not None and cancel.is_set())]
        for i in set(range(len(items))) - set(live):
            out[i] = Cancelled()
        contexts = {i: self.bot.context(items[i][1]) for i in live}  # before the turn joins its conversation
        try:
            turns = self.bot.turns([items[i][0] for i in live], [items[i][1] for i in live],
                                   [_stream(items[i][2], items[i][3]) for i in live]) if live else []
        except Exception:  # noqa: BLE001 - one turn's failure must not fail the others: one at a time
            turns = [self._one_turn(*items[i]) for i in live]
        results = {}
        for i, turn in zip(live, turns):
            if isinstance(turn, BaseException):  # this item's stream stopped (Cancelled); the others go on
                out[i] = turn
            else:
                results[i] = turn
        done = [i for i in live if i in results]
        explanations = self.explainer.explain_batch([items[i][0] for i in done], [results[i].intent for i in done],
                                                    [contexts[i] for i in done]) if done else []
        for i, explanation in zip(done, explanations):
            cancel = items[i][3]
            if cancel is not None and cancel.is_set():
                out[i] = Cancelled()  # a reply nobody received is no turn: neither logged nor kept
            else:
                out[i] = (results[i], explanation)
        return out

    def _one_turn(self, text, conv, on_text, cancel):
        try:
            return self.bot.turn(text, conv, on_text=_stream(on_text, cancel))
        except Exception as e:  # noqa: BLE001 - handed to this turn's caller
            return e

    def respond_stream(self, message: str, session: str):
        """Yields the reply so far (str) while it is generated, then the Answer."""
        parts: queue.Queue = queue.Queue()
        box: dict = {}

        cancel = threading.Event()

        def work():
            try:
                box["answer"] = self.respond(message, session, on_text=parts.put, cancel=cancel)
            except BaseException as e:  # handed to the caller below
                box["error"] = e
            finally:
                parts.put(None)

        threading.Thread(target=work, daemon=True).start()
        try:
            while (part := parts.get()) is not None:
                yield part
        finally:  # closed early (the tab went away): the turn stops at its next token or before logging
            cancel.set()
        if "error" in box:
            raise box["error"]
        yield box["answer"]
