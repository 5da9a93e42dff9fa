"""One chat turn, served: read → turn → log → reply; then explain.

read: `safety.guard.read_message` (guard, then PII redaction), in the request's own thread. turn: bot/turn.py
(classify → fallback → reply), on the batcher's one thread: the turns that queued while the previous batch ran (at
most `MAX_BATCH`; none waits for company) are classified in one forward pass and their replies generated in one
batch (generate mode). log: the audit store, in the request's thread; the row is complete but for its explanation,
and the reply goes back to the user. explain: `Explanations`, a background thread at the lowest CPU priority, takes
the turns waiting for their explanation (a bounded queue) in batches of one Captum call and stores each with its
row. A turn whose explanation never ran (the queue was full, or the server stopped) is explained when somebody
first reads it (`ChatService.turn`): the same computation on the same stored text and context.

Conversations live in the audit store, not in the process: each turn reads its session's turns from
the store, and its audit row is the new turn, so replicas on one database act as one bot.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path

from bot.dialogue import Bot, Conversation
from bot.generate import fill
from bot.model import model_version
from bot.spec import Turn
from bot.store import AT_TURN, ON_READING, AuditStore
from bot.turn import Answer, turns
from explain.attribution import N_STEPS, IntentExplainer
from safety.guard import MAX_CHARS, Rejected, read_message
from safety.pii import UNCHECKED, redact_text, warm_up
from ui.metrics import Metrics

logger = logging.getLogger(__name__)
MAX_BATCH = 8  # turns in one model batch
MAX_TURNS = 50  # a conversation keeps its newest turns (generation reads the last few)
EXPLAIN_BATCH = 4  # explanations in one Captum call (4 beat 16 with earlier turns read: less padding; BENCHMARKS.md)
MAX_PENDING = 5_000  # explanations waiting; beyond, a turn is explained when it is first read
EXPLAIN_WAIT = 60.0  # seconds a caller waits for the background explanation before computing it itself


def _what_queued(items: queue.Queue, batch: list, limit: int) -> list:
    """`batch` and what is waiting in `items` now, up to `limit` in all (never waiting for more)."""
    while len(batch) < limit:
        try:
            batch.append(items.get_nowait())
        except queue.Empty:
            break
    return batch


class Batcher:
    """Collects work items from many threads and runs them in batches on one worker thread.

    `submit(item)` blocks until `run(items)` has returned the item's result (or raised for it):
    `run` returns one result per item, an exception instance to raise in that item's thread."""

    def __init__(self, run, max_batch: int = MAX_BATCH):
        self.run, self.max_batch = run, max_batch
        self.items: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, daemon=True, name="candor-batcher")
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, item):
        done, box = threading.Event(), {}
        self.items.put((item, done, box))
        done.wait()
        if isinstance(box["result"], BaseException):
            raise box["result"]
        return box["result"]

    def _work(self) -> None:
        while True:  # a batch: the first turn, then what queued meanwhile (no added latency for a lone user)
            batch = _what_queued(self.items, [self.items.get()], self.max_batch)
            try:
                results = self.run([item for item, _, _ in batch])
            except BaseException as e:  # noqa: BLE001 - every waiting thread gets the error
                results = [e] * len(batch)
            for (_, done, box), result in zip(batch, results):
                box["result"] = result
                done.set()


class Explanations:
    """The explanations of logged turns, after their replies: one thread at the lowest CPU priority (`nice` 19) that
    starts a batch only when no turn is being answered (the replies never share the CPU, or Python's lock, with an
    explanation for longer than one batch), up to `max_batch` turns per Captum call, from a queue of at most
    `max_pending` turns. `submit` never blocks: when the queue is full the turn waits to be explained on reading."""

    def __init__(self, explain_batch, store: AuditStore, metrics: Metrics, max_batch: int = EXPLAIN_BATCH,
                 max_pending: int = MAX_PENDING, busy=lambda: False):
        self.explain_batch, self.store, self.metrics, self.max_batch = explain_batch, store, metrics, max_batch
        self.busy = busy  # whether a turn is being answered: a batch of explanations waits for a gap
        self.jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        metrics.pending.set_function(self.jobs.qsize)
        self.paused = threading.Event()  # tests: hold the explanations back (a server stopped before they ran)
        self.closing, self.idle = threading.Event(), threading.Event()
        self.idle.set()
        threading.Thread(target=self._work, daemon=True, name="candor-explanations").start()
        atexit.register(self.close)

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batch being explained (at exit: a thread killed inside torch aborts the process). The
        turns still queued are explained when first read."""
        self.closing.set()
        self.idle.wait(timeout)

    def submit(self, answer: Answer, context: list[str]) -> bool:
        """Queue the turn's explanation; False when the queue is full (it is explained on reading)."""
        answer.explained = threading.Event()
        try:
            self.jobs.put_nowait((answer, context))
            return True
        except queue.Full:
            self.metrics.dropped.inc()
            return False

    def _work(self) -> None:
        try:  # this thread alone (Linux threads have their own priority); the thread pool torch starts here inherits it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):  # not Linux: the same order, without the priority
            pass
        while not self.closing.is_set():
            batch = [self.jobs.get()]
            while self.paused.is_set() or self.closing.is_set() or self.busy():
                if self.closing.is_set():
                    return
                time.sleep(0.005 if not self.paused.is_set() else 0.05)
            self.idle.clear()
            batch = _what_queued(self.jobs, batch, self.max_batch)
            try:
                self.run(batch)
            except Exception:  # noqa: BLE001 - these turns stay unexplained and are explained on reading
                logger.exception("explaining %d turns failed; they will be explained when read", len(batch))
            finally:
                for answer, _ in batch:
                    answer.explained.set()
                self.idle.set()

    def run(self, batch: list) -> None:
        answers = [a for a, _ in batch]
        found = self.explain_batch([a.text for a in answers], [a.intent for a in answers], [c for _, c in batch])
        self.store.explain([(a.turn_id, e.attributions(), AT_TURN) for a, e in zip(answers, found)])
        for a, e in zip(answers, found):
            a.explanation = e
        self.metrics.explained.labels("after_reply").inc(len(batch))


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
        self.metrics = Metrics()
        self.answering = 0  # turns between arrival and logged reply (also /metrics' candor_turns_in_flight)
        self._answering_lock = threading.Lock()
        self.metrics.in_flight.set_function(lambda: self.answering)
        self.explanations = Explanations(self.explainer.explain_batch, self.store, self.metrics,
                                         busy=lambda: self.answering > 0)
        self._warm_up()

    def _warm_up(self) -> None:
        """The whole path once before the first user (NER, the spelling dictionary, the model, Captum: seconds), so
        that nobody's first turn pays for it. Nothing is logged."""
        warm_up()
        if self.bot.settings.response_mode == "template":  # the authored replies, each redacted once for the store
            for replies in self.bot.responses.values():
                for reply in replies:
                    self.store.redact_reply(fill(reply, self.bot.placeholders))
        served = read_message("hello, I want to cancel my order")
        self.explainer.explain_batch([served.text], None, [[]])
        turns(self.bot, [served.text], [Conversation([])])

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
        """The turn, logged, without its explanation yet: `explained(answer)` waits for it. Raises
        safety.guard.Rejected for a message the bot will not read, Cancelled once `cancel` is set."""
        start = time.perf_counter()
        try:
            served = read_message(message, self.max_chars)
        except Rejected:
            self.metrics.refused.inc()
            raise
        with self._answer():
            conversation = self.conversation(session)
            answer = self.batcher.submit((served, conversation, _stream(on_text, cancel), cancel))
            answer.model_version = self.version
            context = self.bot.earlier_turns(conversation)
            answer.turn_id = self.store.log(session=session, text=answer.text, reply=answer.reply, intent=answer.intent,
                                            confidence=answer.confidence, fallback=answer.fallback,
                                            fallback_reason=answer.fallback_reason, attributions=None, context=context,
                                            model_version=self.version)
        self.metrics.reply_seconds.observe(time.perf_counter() - start)
        self.metrics.turns.labels("yes" if answer.fallback else "no").inc()
        self.explanations.submit(answer, context)
        return answer

    @contextlib.contextmanager
    def _answer(self):
        with self._answering_lock:
            self.answering += 1
        try:
            yield
        finally:
            with self._answering_lock:
                self.answering -= 1

    def problems(self) -> list[str]:
        """Why this server should not take turns now (`/readyz`): [] when it can."""
        found = []
        if not self.batcher.alive():
            found.append("the model's worker thread has stopped")
        try:
            self.store.ping()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            found.append(f"the audit store does not answer ({type(e).__name__})")
        if self.explanations.jobs.full():
            found.append("the explanation queue is full")
        return found

    async def explained_later(self, answer: Answer, timeout: float = EXPLAIN_WAIT) -> Answer:
        """`explained` for an event loop (the chat panel, the REST API): waits for the background explainer without
        holding a worker thread, and past `timeout` computes the explanation as on reading."""
        waited = 0.0
        while answer.explained is not None and not answer.explained.is_set() and waited < timeout:
            await asyncio.sleep(0.05)
            waited += 0.05
        return await asyncio.to_thread(self.explained, answer, 0)

    def explained(self, answer: Answer, timeout: float | None = EXPLAIN_WAIT) -> Answer:
        """The answer with its explanation, once the background explainer has stored it (or, if it was not queued
        or does not come within `timeout`, computed now as on reading)."""
        event = getattr(answer, "explained", None)
        if event is None or not event.wait(timeout) or answer.explanation is None:
            answer.explanation = self._explain_rows([self.store.get(answer.turn_id)])[0]
        return answer

    def turn(self, turn_id: int) -> dict | None:
        """A logged turn as an auditor reads it: explained now if its explanation was never computed."""
        row = self.store.get(turn_id)
        if row is not None and row["explained"] is None:
            self._explain_rows([row])
            row = self.store.get(turn_id)
        return row

    def _explain_rows(self, rows: list[dict]) -> list:
        """Explain logged turns from their stored text, intent and context, and store each ON_READING (a turn the
        background explainer stored meanwhile keeps its own, the same)."""
        found = self.explainer.explain_batch([r["text"] for r in rows], [r["intent"] for r in rows],
                                             [r["context"] for r in rows])
        self.store.explain([(r["id"], e.attributions(), ON_READING) for r, e in zip(rows, found)])
        self.metrics.explained.labels("on_reading").inc(len(rows))
        return found

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
                     [served.found for served, _, _, _ in items], on_texts=[stream for _, _, stream, _ in items])

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
