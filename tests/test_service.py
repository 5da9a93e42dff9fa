"""One served chat turn: guard → redact → classify → fallback → reply → explain → log."""
import pytest

from safety.guard import Rejected
from ui.service import Answer, ChatService


@pytest.fixture(scope="module")
def service(trained_tiny, tmp_path_factory):
    return ChatService(trained_tiny, str(tmp_path_factory.mktemp("svc") / "audit.sqlite"), explain_steps=16)


def test_a_turn_is_redacted_classified_explained_and_logged(service):
    a = service.respond("cancel my order, card 4111 1111 1111 1111", "s1")
    assert a.text == "cancel my order, card <CREDIT_CARD>" and a.redacted == ["CREDIT_CARD"]
    assert a.intent == "cancel_order" and not a.fallback and 0.3 <= a.confidence <= 1
    assert [w for w, _ in a.attributions] == ["cancel", "my", "order", ",", "card", "<", "CREDIT_CARD", ">"]
    assert max(abs(s) for _, s in a.attributions) == pytest.approx(1.0)
    row = service.store.get(a.turn_id)
    assert row["text"] == a.text and row["intent"] == "cancel_order" and row["model_version"] == a.model_version
    assert [w for w, _ in row["attributions"]] == [w for w, _ in a.attributions]


def test_rejected_messages_are_neither_answered_nor_logged(service):
    before = len(service.store.query())
    with pytest.raises(Rejected, match="limit is 1000"):
        service.respond("y" * 1001, "s2")
    with pytest.raises(Rejected, match="empty"):
        list(service.respond_stream(" \x00 ", "s2"))
    assert len(service.store.query()) == before


def test_streaming_yields_partial_replies_then_the_answer(service):
    service.bot.settings.response_mode = "generate"
    try:
        parts = list(service.respond_stream("where is my package", "s3"))
    finally:
        service.bot.settings.response_mode = "template"
    *partial, answer = parts
    assert isinstance(answer, Answer) and answer.intent == "track_order"
    assert partial and all(isinstance(p, str) for p in partial)
    assert all(len(a) <= len(b) for a, b in zip(partial, partial[1:]))  # grows token by token
    assert answer.reply.startswith(partial[-1][:10])


def test_undo_and_reset_forget_the_conversation(service):
    service.respond("where is my package", "s4")
    service.respond("cancel my order", "s4")
    assert len(service.conversation("s4").turns) == 2
    service.undo("s4")
    assert [t.intent for t in service.conversation("s4").turns] == ["track_order"]
    service.reset("s4")
    assert service.conversation("s4").turns == []


def test_chat_shows_user_text_as_text_and_retry_gets_it_back():
    from ui.web import _typed, _user, highlights

    typed = 'line one <b>bold</b> & "quotes"\nline two <br>'
    shown = _user(typed)
    assert "<b>" not in shown and shown.count("<br>") == 1  # only the real line break is markup
    assert _typed(shown) == typed
    assert highlights([("a", 0.5), ("b", -1.0)]) == [("a", 0.5), (" ", None), ("b", -1.0)]
