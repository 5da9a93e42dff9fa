"""One chat turn, served: read → turn → log.

read: `safety.guard.read_message` (guard, then PII redaction), in the request's own thread. turn: bot/turn.py
(classify → fallback → reply → explain), on the batcher's one thread (Captum hooks the shared embedding layer):
the turns that queued while the previous batch ran (at most `MAX_BATCH`; none waits for company) are classified
in one forward pass, their replies generated in one batch (generate mode) and explained in one Captum call. log:
the audit store, in the request's thread.

Conversations live in the audit store, not in the process: each turn reads its session's turns from
the store, and its audit row is the new turn, so replicas on one database act as one bot.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

from bot.dialogue import Bot, Conversation
from bot.model import model_version
from bot.spec import Turn
from bot.store import AuditStore
from bot.turn import Answer, turns
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


def _gone(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def _stream(on_text, cancel):
    """The reply-so-far callback of one turn; raises Cancelled between tokens once `cancel` is set."""
    if on_text is None and cancel is None:
        return None

    def text_out(so_far: str) -> None:
        if _gone(cancel):
            raise Cancelled()
        if on_text:
            on_text(so_far)
    return text_out


class ChatService:
    def __init__(self, model_dir: str | Path, audit_db: str, device: str = "cpu", explain_steps: int = N_STEPS,
                 max_chars: int = MAX_CHARS):
        self.model_dir = Path(model_dir)
        self.bot = Bot(model_dir, device=device)
        self.explainer = IntentExplainer(self.bot.model, self.bot.enc, n_steps=explain_steps)
        self.store = AuditStore(audit_db, redact_text, cacheable=lambda redacted: f"<{UNCHECKED}>" not in redacted)
        self.version = model_version(model_dir, self.bot.card)
        self.max_chars = max_chars
        self.batcher = Batcher(self._turns)
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
        served = read_message(message, self.max_chars)
        answer = self.batcher.submit((served, self.conversation(session), _stream(on_text, cancel), cancel))
        answer.model_version = self.version
        answer.turn_id = self.store.log(session=session, text=answer.text, reply=answer.reply, intent=answer.intent,
                                        confidence=answer.confidence, fallback=answer.fallback,
                                        fallback_reason=answer.fallback_reason, attributions=answer.attributions,
                                        model_version=self.version)
        return answer

    def _turns(self, items: list) -> list:
        """The batcher's work: the turns of several (served message, conversation, stream, cancel) in one batch
        (bot/turn.py). An Answer or the exception for each item; a turn whose client went away (before or while
        it ran) is Cancelled: a reply nobody received is no turn, neither logged nor kept."""
        live = [i for i, (_, _, _, cancel) in enumerate(items) if not _gone(cancel)]
        try:
            answers = self._run([items[i] for i in live]) if live else []
        except Exception:  # noqa: BLE001 - one turn's failure must not fail the others: one at a time
            answers = [self._run_one(items[i]) for i in live]
        out: list = [Cancelled() for _ in items]
        for i, answer in zip(live, answers):
            if not _gone(items[i][3]):
                out[i] = answer
        return out

    def _run(self, items: list) -> list:
        return turns(self.bot, [served.text for served, _, _, _ in items], [conv for _, conv, _, _ in items],
                     [served.found for served, _, _, _ in items], explain=self.explainer.explain_batch,
                     on_texts=[stream for _, _, stream, _ in items])

    def _run_one(self, item):
        try:
            return self._run([item])[0]
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
