"""The audit store (SQLite and a real PostgreSQL server, through SQLAlchemy): logging, filters, exports, and that raw PII never reaches disk."""
import csv
import io
import json
from datetime import datetime, timedelta, timezone

from bot.store import AuditStore, Filter, to_csv, to_json
from safety.pii import redact_text


def _log(store, text="hello", intent="greet", confidence=0.9, fallback=False, time=None, words=None):
    return store.log(session="s1", text=text, reply="hi!", intent=intent, confidence=confidence, fallback=fallback,
                     fallback_reason="low_confidence" if fallback else None,
                     attributions=words or [(w, 0.5) for w in text.split()], model_version="tiny@abc", time=time)


def test_raw_pii_never_reaches_the_database_file(tmp_path):
    db = tmp_path / "audit.sqlite"
    store = AuditStore(str(db), redact_text)
    secret = "my card 4111 1111 1111 1111 and mail jo.smith@example.com"
    turn = _log(store, text=secret)  # the caller "forgot" to redact: the store does it
    row = store.get(turn)
    assert row["text"] == "my card <CREDIT_CARD> and mail <EMAIL_ADDRESS>"
    assert row["attributions"] == []  # words of the raw text would spell the card out: not kept
    clean = _log(store, text="my card <CREDIT_CARD>", words=[("my", 0.1), ("card", 0.9), ("<CREDIT_CARD>", 0.2)])
    assert store.get(clean)["attributions"] == [["my", 0.1], ["card", 0.9], ["<CREDIT_CARD>", 0.2]]
    store.engine.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the database and any journal
    assert b"4111" not in raw and b"jo.smith" not in raw and b"example.com" not in raw
    assert b"<CREDIT_CARD>" in raw


def test_filters_by_intent_confidence_fallback_and_date(db_url):
    store = AuditStore(db_url, redact_text)
    now = datetime.now(timezone.utc)
    _log(store, "cancel it", "cancel_order", 0.95, time=now - timedelta(days=3))
    _log(store, "where is it", "track_order", 0.55, time=now - timedelta(days=1))
    _log(store, "blah", "track_order", 0.2, fallback=True, time=now)
    ids = lambda f: [r["text"] for r in store.query(f)]  # noqa: E731
    assert ids(Filter()) == ["blah", "where is it", "cancel it"]  # newest first
    assert ids(Filter(intent="track_order")) == ["blah", "where is it"]
    assert ids(Filter(min_confidence=0.5, max_confidence=0.9)) == ["where is it"]
    assert ids(Filter(fallback=True)) == ["blah"] and ids(Filter(fallback=False)) == ["where is it", "cancel it"]
    assert ids(Filter(since=now - timedelta(days=2))) == ["blah", "where is it"]
    assert ids(Filter(until=now - timedelta(days=2))) == ["cancel it"]
    assert ids(Filter(limit=1)) == ["blah"]
    assert store.intents() == ["cancel_order", "track_order"]
    assert store.get(999) is None


def test_store_survives_reopening(db_url):
    path = db_url
    _log(AuditStore(path, redact_text), "first")
    store = AuditStore(path, redact_text)
    _log(store, "second")
    assert [r["text"] for r in store.query()] == ["second", "first"]


def test_exports_round_trip_and_defuse_spreadsheet_formulas(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}", redact_text)  # a SQLAlchemy URL works too
    _log(store, '=HYPERLINK("http://evil.example","x")', words=[("=HYPERLINK", 1.0)])
    _log(store, "plain words")
    rows = store.query()
    parsed = json.loads(to_json(rows))
    assert [r["text"] for r in parsed] == ["plain words", '=HYPERLINK("http://evil.example","x")']
    assert parsed[0]["attributions"] == [["plain", 0.5], ["words", 0.5]]
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert table[1]["text"].startswith("'=HYPERLINK") and table[0]["text"] == "plain words"
    assert json.loads(table[0]["attributions"]) == [["plain", 0.5], ["words", 0.5]]
    assert table[0]["time"].endswith("+00:00")


def test_search_pages_and_counts_and_dates_honour_their_offset(db_url):
    store = AuditStore(db_url, lambda t: t)
    at = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
    for i in range(7):
        _log(store, text=f"turn {i}", time=at + timedelta(minutes=i))
    f = Filter(limit=3)
    assert store.count(f) == 7
    pages = [[r["text"] for r in store.query(f, offset=o)] for o in (0, 3, 6)]
    assert pages == [["turn 6", "turn 5", "turn 4"], ["turn 3", "turn 2", "turn 1"], ["turn 0"]]
    plus2 = timezone(timedelta(hours=2))
    since = Filter(since=datetime(2026, 1, 1, 12, 3, tzinfo=plus2), limit=None)  # 10:03 UTC
    assert [r["text"] for r in store.query(since)] == ["turn 6", "turn 5", "turn 4", "turn 3"]
    until = Filter(until=datetime(2026, 1, 1, 5, 1, tzinfo=timezone(timedelta(hours=-5))))  # 10:01 UTC
    assert store.count(until) == 2


def _at_once(n: int, write) -> list[Exception]:
    """Run write(i) in n threads released together; the errors they raised."""
    import threading

    errors, gate = [], threading.Barrier(n)

    def worker(i):
        gate.wait()
        try:
            write(i)
        except Exception as e:  # noqa: BLE001 - any lost write fails the calling test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_thirty_two_concurrent_writers_lose_no_row(db_url):
    store = AuditStore(db_url, lambda t: t)
    errors = _at_once(32, lambda i: [_log(store, text=f"writer {i} turn {k}") for k in range(20)])
    assert errors == [] and store.count() == 32 * 20
    assert len({r["text"] for r in store.query(Filter(limit=None))}) == 640


def test_raw_pii_never_reaches_postgresql_files(postgres):
    from sqlalchemy import text

    store = AuditStore(postgres.new_database(), redact_text)
    _log(store, text="my card 4111 1111 1111 1111, mail jo.smith@example.com")
    store.log(session="s9", text="call me on +44 7911 123456", reply="ok", intent="greet", confidence=0.9,
              fallback=False, fallback_reason=None, attributions=[], model_version="m")
    with store.engine.connect() as c:
        c.execute(text("CHECKPOINT"))  # every page on disk
    raw = b"".join(f.read_bytes() for f in postgres.data.rglob("*") if f.is_file())
    assert b"4111 1111" not in raw and b"jo.smith" not in raw and b"7911 123456" not in raw
    assert b"<CREDIT_CARD>" in raw


def _turn(store, session, text, reply="ok", intent="greet", fallback=False, time=None):
    return store.log(session=session, text=text, reply=reply, intent=intent, confidence=0.9, fallback=fallback,
                     fallback_reason="low_confidence" if fallback else None, attributions=[], model_version="m",
                     time=time)


def test_the_audit_rows_are_the_conversation_shared_between_replicas(db_url):
    a, b = AuditStore(db_url, redact_text, session_key=b"k" * 32), AuditStore(db_url, redact_text, session_key=b"k" * 32)
    _turn(a, "s1", "where is my order", "It is on its way.", "track_order")
    assert b.conversation("s1") == [("where is my order", "It is on its way.", "track_order")]  # the other replica
    _turn(b, "s1", "mail me at jo@example.com", "Sorry?", fallback=True)
    assert a.conversation("s1") == [("where is my order", "It is on its way.", "track_order"),
                                    ("mail me at <EMAIL_ADDRESS>", "Sorry?", None)]  # redacted; a fallback: no intent
    assert a.conversation("other") == []
    for i in range(8):
        _turn(a, "s2", f"turn {i}")
    assert [t[0] for t in b.conversation("s2", keep=5)] == ["turn 3", "turn 4", "turn 5", "turn 6", "turn 7"]
    b.keep_turns("s2", 2)  # undo back to the first two turns of the chat
    assert [t[0] for t in a.conversation("s2", keep=5)] == ["turn 0", "turn 1"]
    a.keep_turns("s2", 0)
    assert b.conversation("s2") == [] and b.count() == 10  # clearing a conversation keeps its audit rows


def test_turns_written_at_once_on_two_replicas_are_all_kept(db_url):
    stores = [AuditStore(db_url, lambda t: t, session_key=b"k" * 32) for _ in range(2)]
    errors = _at_once(8, lambda i: _turn(stores[i % 2], "same", f"hi {i}"))
    assert errors == [] and stores[0].count() == 8
    assert sorted(t[0] for t in stores[1].conversation("same")) == [f"hi {i}" for i in range(8)]  # none overwritten


def test_idle_conversations_are_not_continued(db_url):
    store = AuditStore(db_url, lambda t: t)
    _turn(store, "s", "two days ago", time=datetime.now(timezone.utc) - timedelta(days=2))
    _turn(store, "s", "now")
    assert store.conversation("s") == [("now", "ok", "greet")] and store.count() == 2


def test_a_store_from_before_conversations_is_brought_up_to_date(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    _log(AuditStore(str(path), lambda t: t), "an old turn")
    with sqlite3.connect(path) as c:  # the table as it was before the in_conversation column
        c.execute("ALTER TABLE candor_turns DROP COLUMN in_conversation")
    store = AuditStore(str(path), lambda t: t)
    assert [r["text"] for r in store.query()] == ["an old turn"] and store.conversation("s1") == []
    _log(store, "a new turn")
    assert [t[0] for t in store.conversation("s1")] == ["a new turn"]
