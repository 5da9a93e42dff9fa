"""The audit store: one row per chat turn, in SQLite by default or any SQLAlchemy URL (PostgreSQL).

The store is built with a `redact` callable and runs every text it is given through it before
the row is written, so raw PII cannot reach the database even if a caller forgets to redact.
Chat session ids are stored as a keyed hash (HMAC-SHA256, 16 hex digits): turns of one conversation
still group together, but a stored or exported id cannot be used to attach to a live session.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

COLUMNS = ("id", "time", "session", "text", "intent", "confidence", "fallback", "fallback_reason", "reply",
           "model_version", "attributions")


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
    attributions: Mapped[list] = mapped_column(JSON)  # [[word, score], ...] on the redacted text

    def to_dict(self) -> dict:
        d = {c: getattr(self, c) for c in COLUMNS}
        d["time"] = self.time.astimezone(timezone.utc).isoformat(timespec="seconds") if self.time.tzinfo \
            else self.time.replace(tzinfo=timezone.utc).isoformat(timespec="seconds")
        return d


@dataclass
class Filter:
    intent: str | None = None
    min_confidence: float = 0.0
    max_confidence: float = 1.0
    fallback: bool | None = None  # None: both
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 500  # None: every matching turn (exports)


def database_url(where: str) -> str:
    """A SQLAlchemy URL as given, or a file path made into a SQLite URL."""
    if "://" in where:
        return where
    path = Path(where).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


SESSION_KEY_ENV = "CANDOR_SESSION_KEY"  # share it between replicas; otherwise a random key per process


class AuditStore:
    def __init__(self, where: str, redact: Callable[[str], str], session_key: bytes | None = None):
        self.url = database_url(where)
        self.redact = redact
        env = os.environ.get(SESSION_KEY_ENV, "").encode()
        self._session_key = session_key or env or secrets.token_bytes(32)
        self.engine = create_engine(self.url)
        _Base.metadata.create_all(self.engine)

    def log(self, *, session: str, text: str, reply: str, intent: str, confidence: float, fallback: bool,
            fallback_reason: str | None, attributions: list[tuple[str, float]], model_version: str,
            time: datetime | None = None) -> int:
        r = self.redact
        joined = " ".join(w for w, _ in attributions)
        if r(joined) != joined:  # words of unredacted text (a card number split into "4111", "1111"...): drop them
            attributions = []
        row = TurnRow(time=time or datetime.now(timezone.utc), session=self.pseudonym(session), text=r(text),
                      reply=r(reply), intent=intent, confidence=float(confidence), fallback=bool(fallback),
                      fallback_reason=fallback_reason, model_version=model_version,
                      attributions=[[w, float(s)] for w, s in attributions])
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            return row.id

    def pseudonym(self, session: str) -> str:
        return hmac.new(self._session_key, session.encode("utf-8"), hashlib.sha256).hexdigest()[:16]

    @staticmethod
    def _where(q, f: Filter):
        q = q.where(TurnRow.confidence >= f.min_confidence, TurnRow.confidence <= f.max_confidence)
        if f.intent:
            q = q.where(TurnRow.intent == f.intent)
        if f.fallback is not None:
            q = q.where(TurnRow.fallback == f.fallback)
        if f.since:  # in UTC, as stored (SQLite keeps no offset)
            q = q.where(TurnRow.time >= _utc(f.since))
        if f.until:
            q = q.where(TurnRow.time <= _utc(f.until))
        return q

    def query(self, f: Filter = Filter(), offset: int = 0) -> list[dict]:
        q = self._where(select(TurnRow), f).order_by(TurnRow.id.desc()).offset(offset).limit(f.limit)
        with Session(self.engine) as s:
            return [row.to_dict() for row in s.scalars(q)]

    def count(self, f: Filter = Filter()) -> int:
        with Session(self.engine) as s:
            return s.scalar(self._where(select(func.count()).select_from(TurnRow), f))

    def get(self, turn_id: int) -> dict | None:
        with Session(self.engine) as s:
            row = s.get(TurnRow, turn_id)
            return row.to_dict() if row else None

    def intents(self) -> list[str]:
        with Session(self.engine) as s:
            return sorted(s.scalars(select(TurnRow.intent).distinct()))


def _utc(d: datetime) -> datetime:
    """An aware time in UTC, naive (as SQLite stores it); a naive time is taken to be UTC already."""
    return d.astimezone(timezone.utc).replace(tzinfo=None) if d.tzinfo else d


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
