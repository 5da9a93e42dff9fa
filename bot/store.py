"""The audit store: one row per chat turn, in SQLite by default or any SQLAlchemy URL (PostgreSQL).

The store is built with a `redact` callable and runs every text it is given through it before
the row is written, so raw PII cannot reach the database even if a caller forgets to redact (the served `redact`,
`safety.pii.redact_text`, passes unchanged only the text the read path produced a moment before in this process).
Chat session ids are stored as a keyed hash (HMAC-SHA256, 16 hex digits): turns of one conversation
still group together, but a stored or exported id cannot be used to attach to a live session.

The audit rows are also the live conversations: a session's conversation is its rows still marked
`in_conversation` (undo and reset clear the mark, the rows stay), its newest `keep` turns from the last
`CONVERSATION_TTL`. Appending a turn is writing its row, so two turns at once (on one replica or two) lose
nothing, and any replica sharing the database continues a conversation: several `candor serve`
processes on one PostgreSQL act as one bot.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import math
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy import inspect as inspect_db
from sqlalchemy import text as sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bot.spec import EARLIER

COLUMNS = ("id", "time", "session", "text", "intent", "confidence", "fallback", "fallback_reason", "reply",
           "model_version", "attributions", "explained", "correct_intent", "corrected_by", "corrected_at")
CORRECTION_COLUMNS = {"correct_intent": "VARCHAR(128)", "corrected_by": "VARCHAR(128)", "corrected_at": "TIMESTAMP"}
# When a turn's explanation was computed (the `explained` column): after the reply, by the background explainer, or
# when somebody first read the turn (a server stopped before its explanation ran; the result is the same). NULL: not
# yet; its `attributions` are then [] until it is.
AT_TURN, ON_READING = "after the reply", "on reading"


class _Base(DeclarativeBase):
    pass


class TurnRow(_Base):
    __tablename__ = "candor_turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    session: Mapped[str] = mapped_column(String(64), index=True)
    text: Mapped[str] = mapped_column(Text)
    intent: Mapped[str] = mapped_column(String(128), index=True)
    confidence: Mapped[float] = mapped_column(Float)
    fallback: Mapped[bool] = mapped_column(Boolean)
    fallback_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reply: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(String(128))
    attributions: Mapped[list] = mapped_column(JSON)  # [[word, score or null (not read)], ...] on the redacted text
    explained: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)  # AT_TURN, ON_READING; None: not yet
    context: Mapped[list | None] = mapped_column(JSON, nullable=True)  # the earlier user texts the classifier read
    in_conversation: Mapped[bool] = mapped_column(Boolean, default=True)  # cleared by undo and reset
    # An auditor's correction (the Audit tab): the intent the turn should have had, or "out_of_scope"
    correct_intent: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    corrected_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    corrected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_dict(self) -> dict:
        d = {c: getattr(self, c) for c in COLUMNS}
        for c in ("time", "corrected_at"):
            if d[c] is not None:
                d[c] = (d[c].astimezone(timezone.utc) if d[c].tzinfo else d[c].replace(tzinfo=timezone.utc)).isoformat(
                    timespec="seconds")
        return d


CONVERSATION_TTL = timedelta(hours=24)


@dataclass
class Filter:
    intent: str | None = None
    min_confidence: float = 0.0
    max_confidence: float = 1.0
    fallback: bool | None = None  # None: both
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 500  # None: every matching turn (exports)

    @classmethod
    def parse(cls, intent: str | None = None, lo: float | str = 0.0, hi: float | str = 1.0, fallback: str = "any",
              since: str = "", until: str = "") -> "Filter":
        """The audit filters as people type them (the Audit tab, the export route, `GET /v1/turns`): confidence
        bounds in [0, 1], fallback any/yes/no, dates `YYYY-MM-DD[ HH:MM]` (UTC unless an offset is given; a bare
        end date is the end of that day). Raises ValueError saying which value is wrong."""
        try:
            lo, hi = float(lo), float(hi)
        except (TypeError, ValueError):
            raise ValueError("the confidence bounds must be numbers between 0 and 1") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi <= 1):
            raise ValueError("the confidence bounds must be numbers between 0 and 1, the lower one first")
        if fallback not in ("any", "yes", "no"):
            raise ValueError("fallback must be any, yes or no")
        return cls(intent=None if intent in (None, "", "(any)") else intent, min_confidence=lo, max_confidence=hi,
                   fallback={"yes": True, "no": False}.get(fallback), since=_date(since, False),
                   until=_date(until, True))


def _date(value: str | None, end: bool) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value)
        if len(value) == 10 and end:
            d = d.replace(hour=23, minute=59, second=59)
        return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: a date at the calendar's edge moved by its time zone
        raise ValueError(f"'{value}' is not a date; use YYYY-MM-DD or YYYY-MM-DD HH:MM") from None


def database_url(where: str) -> str:
    """A SQLAlchemy URL as given, or a file path made into a SQLite URL."""
    if "://" in where:
        return where
    path = Path(where).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_settings(connection, _record) -> None:
    """SQLite for many writers in one process: write-ahead logging (readers never wait for the writer; a commit is an
    append, synced at checkpoints: an application killed at any point loses no committed turn, a power cut may lose
    the last ones), and a writer waits for the lock instead of failing."""
    c = connection.cursor()
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("PRAGMA busy_timeout=30000")
    c.close()


class AuditDatabaseError(Exception):
    """The audit database cannot be opened (unreachable server, missing driver, bad URL)."""


def _shown(url: str) -> str:
    """The URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: show nothing of it
        return "(unparsable URL)"


SESSION_KEY_ENV = "CANDOR_SESSION_KEY"  # share it between replicas; otherwise a random key per process


class AuditStore:
    def __init__(self, where: str, redact: Callable[[str], str], session_key: bytes | None = None,
                 cacheable: Callable[[str], bool] = lambda redacted: True):
        self.url = database_url(where)
        self.redact, self.cacheable = redact, cacheable
        env = os.environ.get(SESSION_KEY_ENV, "").encode()
        self._session_key = session_key or env or secrets.token_bytes(32)
        try:
            self.engine = create_engine(self.url, pool_pre_ping=not self.url.startswith("sqlite"))
            if self.url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_settings)
            self._create_tables()
        except ModuleNotFoundError as e:
            raise AuditDatabaseError(f"audit database {_shown(self.url)}: its driver is not installed ({e}); for "
                                     "PostgreSQL: pip install 'candor[postgres]'") from None
        except (SQLAlchemyError, ValueError) as e:
            raise AuditDatabaseError(f"cannot open the audit database {_shown(self.url)}: "
                                     f"{str(getattr(e, 'orig', None) or e).strip().splitlines()[0]}") from None
        self._replies: OrderedDict[bytes, str] = OrderedDict()  # keyed hash of a reply -> its redaction
        self._replies_lock = threading.Lock()

    def _create_tables(self) -> None:
        """Create (or bring up to date) the table; replicas starting at once on PostgreSQL take turns."""
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.execute(sql("SELECT pg_advisory_xact_lock(72430012)"))
            _Base.metadata.create_all(c)
            have = {col["name"] for col in inspect_db(c).get_columns(TurnRow.__tablename__)}
            if "in_conversation" not in have:
                # a store written before conversations lived here: its old turns are no live conversation
                c.execute(sql(f"ALTER TABLE {TurnRow.__tablename__} ADD COLUMN in_conversation BOOLEAN "
                              "NOT NULL DEFAULT FALSE"))
            for name, kind in CORRECTION_COLUMNS.items():  # a store written before corrections: none yet
                if name not in have:
                    c.execute(sql(f"ALTER TABLE {TurnRow.__tablename__} ADD COLUMN {name} {kind}"))
            if "explained" not in have:  # a store written before explanations came after the reply: all explained
                c.execute(sql(f"ALTER TABLE {TurnRow.__tablename__} ADD COLUMN explained VARCHAR(16) "
                              f"DEFAULT '{AT_TURN}'"))
                c.execute(sql(f"ALTER TABLE {TurnRow.__tablename__} ADD COLUMN context JSON"))

    def ping(self) -> None:
        """Raises if the database does not answer."""
        with self.engine.connect() as c:
            c.execute(sql("SELECT 1"))

    def redact_reply(self, reply: str) -> str:
        """Replies repeat (templates): each distinct one is redacted once. Keyed by an HMAC, not the text."""
        key = hmac.new(self._session_key, reply.encode("utf-8"), hashlib.sha256).digest()
        with self._replies_lock:
            if key in self._replies:
                self._replies.move_to_end(key)
                return self._replies[key]
        out = self.redact(reply)
        if not self.cacheable(out):  # e.g. a redaction that ran out of time: try again next time
            return out
        with self._replies_lock:
            self._replies[key] = out
            while len(self._replies) > 4096:
                self._replies.popitem(last=False)
        return out

    def log(self, *, session: str, text: str, reply: str, intent: str, confidence: float, fallback: bool,
            fallback_reason: str | None, attributions: list[tuple[str, float | None]] | None, model_version: str,
            context: list[str] | None = None, time: datetime | None = None) -> int:
        """Write one turn's audit row, which is also the newest turn of the session's conversation. `attributions`
        None: the explanation comes later (`explain`); `context`: the earlier user texts the classifier read, kept
        so that it can be explained as it was read."""
        stored = self.redact(text)
        row = TurnRow(time=time or datetime.now(timezone.utc), session=self.pseudonym(session), text=stored,
                      reply=self.redact_reply(reply), intent=intent, confidence=float(confidence),
                      fallback=bool(fallback), fallback_reason=fallback_reason, model_version=model_version,
                      attributions=self._safe(text, stored, attributions or []),
                      explained=None if attributions is None else AT_TURN,
                      context=[self.redact(t) for t in context] if context else None, in_conversation=True)
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            return row.id

    def _safe(self, text: str, stored: str, attributions) -> list:
        """The attributions as stored: [] when their words are not simply those of the stored text and would show
        what redaction removed (a card number split into "4111", "1111", …)."""
        words = "".join(w for w, _ in attributions if w != EARLIER)
        if not (stored == text and words == "".join(text.split())):
            joined = " ".join(w for w, _ in attributions)
            if self.redact(joined) != joined:
                attributions = []
        return [[w, None if s is None else float(s)] for w, s in attributions]

    def explain(self, done: list[tuple[int, list, str]]) -> None:
        """Store explanations computed after their turns: (turn id, attributions of its stored text, AT_TURN or
        ON_READING), in one transaction. A turn already explained keeps its explanation (they are the same)."""
        with Session(self.engine) as s, s.begin():
            for turn_id, attributions, how in done:
                row = s.get(TurnRow, turn_id)
                if row is not None and row.explained is None:
                    row.attributions, row.explained = self._safe(row.text, row.text, attributions), how

    def count_unexplained(self) -> int:
        with Session(self.engine) as s:
            return s.scalar(select(func.count()).select_from(TurnRow).where(TurnRow.explained.is_(None)))

    # ------------------------------------------------------------ conversations
    def _live(self, session: str):
        since = self._time(datetime.now(timezone.utc) - CONVERSATION_TTL)
        return (TurnRow.session == self.pseudonym(session), TurnRow.in_conversation.is_(True), TurnRow.time >= since)

    def conversation(self, session: str, keep: int = 50) -> list[tuple[str, str, str | None]]:
        """The session's newest `keep` turns, oldest first: (user text, reply, intent or None for a fallback)."""
        q = select(TurnRow.text, TurnRow.reply, TurnRow.intent, TurnRow.fallback).where(*self._live(session))
        with Session(self.engine) as s:
            rows = s.execute(q.order_by(TurnRow.id.desc()).limit(keep)).all()
        return [(t, reply, None if fb else intent) for t, reply, intent, fb in reversed(rows)]

    def keep_turns(self, session: str, n: int) -> None:
        """Keep the first `n` turns of the live conversation (undo, retry: the turns before the one undone,
        counted as the chat shows them); 0 clears it. The audit rows stay."""
        with Session(self.engine) as s, s.begin():
            ids = s.scalars(select(TurnRow.id).where(*self._live(session)).order_by(TurnRow.id)).all()
            if ids[max(0, n):]:
                s.execute(update(TurnRow).where(TurnRow.id.in_(ids[max(0, n):])).values(in_conversation=False))

    def pseudonym(self, session: str) -> str:
        return hmac.new(self._session_key, session.encode("utf-8"), hashlib.sha256).hexdigest()[:16]

    def _time(self, d: datetime) -> datetime:
        """A time as the database compares it: naive UTC on SQLite (it keeps no offset), aware elsewhere."""
        d = d.astimezone(timezone.utc) if d.tzinfo else d.replace(tzinfo=timezone.utc)
        return d.replace(tzinfo=None) if self.url.startswith("sqlite") else d

    def _where(self, q, f: Filter):
        q = q.where(TurnRow.confidence >= f.min_confidence, TurnRow.confidence <= f.max_confidence)
        if f.intent:
            q = q.where(TurnRow.intent == f.intent)
        if f.fallback is not None:
            q = q.where(TurnRow.fallback == f.fallback)
        if f.since:  # in UTC, as stored (SQLite keeps no offset)
            q = q.where(TurnRow.time >= self._time(f.since))
        if f.until:
            q = q.where(TurnRow.time <= self._time(f.until))
        return q

    def query(self, f: Filter = Filter(), offset: int = 0) -> list[dict]:
        q = self._where(select(TurnRow), f).order_by(TurnRow.id.desc()).offset(offset).limit(f.limit)
        with Session(self.engine) as s:
            return [row.to_dict() for row in s.scalars(q)]

    def count(self, f: Filter = Filter()) -> int:
        with Session(self.engine) as s:
            return s.scalar(self._where(select(func.count()).select_from(TurnRow), f))

    def get(self, turn_id: int) -> dict | None:
        """The turn, with the earlier user texts its classifier read (`context`)."""
        with Session(self.engine) as s:
            row = s.get(TurnRow, turn_id)
            return {**row.to_dict(), "context": row.context or []} if row else None

    def correct(self, turn_id: int, intent: str, by: str) -> dict:
        """Record an auditor's correction of a turn: the intent it should have had (or "out_of_scope"). A later
        correction of the same turn replaces it. Returns the turn. The text stays the stored (redacted) text."""
        with Session(self.engine) as s, s.begin():
            row = s.get(TurnRow, turn_id)
            if row is None:
                raise KeyError(f"no turn #{turn_id}")
            row.correct_intent, row.corrected_by = intent, by
            row.corrected_at = datetime.now(timezone.utc)
            s.flush()
            return row.to_dict()

    def corrections(self) -> list[dict]:
        """Every corrected turn, oldest first."""
        with Session(self.engine) as s:
            q = select(TurnRow).where(TurnRow.correct_intent.is_not(None)).order_by(TurnRow.id)
            return [row.to_dict() for row in s.scalars(q)]

    def intents(self) -> list[str]:
        with Session(self.engine) as s:
            return sorted(s.scalars(select(TurnRow.intent).distinct()))


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2, ensure_ascii=False)


def _cell(value):
    """Spreadsheets run a cell starting with = + - @ as a formula: prefix user text with a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(v) for k, v in {**row, "attributions": json.dumps(row["attributions"],
                                                                              ensure_ascii=False)}.items()})
    return buf.getvalue()
