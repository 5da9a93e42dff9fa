"""One served chat turn: read (guard → redact) → turn (classify → fallback → reply → explain) → log."""
import pytest

from bot.turn import Answer
from safety.guard import Rejected
from ui.service import ChatService


@pytest.fixture(scope="module")
def service(trained_tiny, tmp_path_factory):
    return ChatService(trained_tiny, str(tmp_path_factory.mktemp("svc") / "audit.sqlite"), explain_steps=16)


def test_a_turn_is_redacted_classified_explained_and_logged(service):
    a = service.explained(service.respond("cancel my order, card 4111 1111 1111 1111", "s1"))
    assert a.text == "cancel my order, card <CREDIT_CARD>" and a.redacted_types == ["CREDIT_CARD"]
    assert a.intent == "cancel_order" and not a.fallback and 0.3 <= a.confidence <= 1
    assert [w for w, _ in a.attributions] == ["cancel", "my", "order", ",", "card", "<", "CREDIT_CARD", ">"]
    assert max(abs(s) for _, s in a.attributions) == pytest.approx(1.0)
    row = service.store.get(a.turn_id)
    assert row["text"] == a.text and row["intent"] == "cancel_order" and row["model_version"] == a.model_version
    assert [w for w, _ in row["attributions"]] == [w for w, _ in a.attributions]


def test_a_follow_up_is_classified_and_explained_after_the_earlier_turn(service):
    """The classifier reads the session's previous user turn (from the store, redacted), and the explanation
    served and logged names it as one item before the words."""
    from bot.spec import EARLIER

    first = service.explained(service.respond("hello, cancel my order please", "follow-1"))
    assert first.intent == "cancel_order" and EARLIER not in [w for w, _ in first.attributions]
    expected = service.bot.classify_batch(["it is number 4432"], [service.conversation("follow-1")])[0]
    a = service.explained(service.respond("it is number 4432", "follow-1"))
    assert a.intent == expected.intent == "cancel_order" and not a.fallback
    assert a.confidence == pytest.approx(expected.confidence, abs=1e-5)
    assert service.bot.classify("it is number 4432").confidence < a.confidence  # alone, it says less
    assert [w for w, _ in a.attributions] == [EARLIER, "it", "is", "number", "4432"]
    assert max(abs(s) for _, s in a.attributions) == pytest.approx(1.0)
    assert service.store.get(a.turn_id)["attributions"] == [[w, s] for w, s in a.attributions]


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
    service.keep("s4", 1)
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


def test_undo_keeps_the_turns_before_and_a_reset_racing_a_turn_breaks_nothing(service):
    import threading

    from ui.service import MAX_TURNS

    for text in ("hello", "cancel my order", "where is my package"):
        service.respond(text, "s-undo")
    service.keep("s-undo", 1)
    assert [t.user for t in service.conversation("s-undo").turns] == ["hello"]
    errors = []

    def chat():
        try:
            for _ in range(15):
                service.respond("where is my package", "s-race")
        except Exception as e:  # noqa: BLE001 - any error fails the test below
            errors.append(e)

    def reset():
        for _ in range(300):
            service.reset("s-race")
            service.conversation("s-race")

    threads = [threading.Thread(target=chat), threading.Thread(target=reset)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for _ in range(MAX_TURNS + 2):
        service.respond("hello", "s-long")
    assert len(service.conversation("s-long").turns) == MAX_TURNS  # a conversation does not grow without limit
    assert service.store.count() >= MAX_TURNS + 2  # the audit log keeps every turn


def test_undo_and_retry_count_only_turns_that_were_sent():
    from ui.web import REFUSED, _refused, turns_in

    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
               {"role": "user", "content": "x" * 200 + "…"}, {"role": "assistant", "content": REFUSED + "too long."},
               {"role": "user", "content": "cancel"}, {"role": "assistant", "content": "ok"}]
    assert turns_in(history) == 2 and turns_in(history[:4]) == 1 and turns_in(history[:2]) == 1
    assert _refused(history, 2) and not _refused(history, 0) and not _refused(history, 4)


def test_every_model_event_shares_one_concurrency_group(service):
    from ui.auth import Access
    from ui.web import MODEL_CONCURRENCY, MODEL_EVENTS, build

    app = build(service, Access())
    fns = app.fns.values()
    model_events = [f for f in fns if f.concurrency_id == MODEL_EVENTS]
    assert len(model_events) == 3  # chat, retry and the /respond API: 4 at a time in all, not 4 each
    assert {f.concurrency_limit for f in model_events} == {MODEL_CONCURRENCY}
    names = {getattr(f.fn, "__name__", "") for f in fns if f.fn} - {"send", "retry", "api_respond"}
    assert not any(f.concurrency_id != MODEL_EVENTS and getattr(f.fn, "__name__", "") in ("send", "retry")
                   for f in fns) and names


def test_a_turn_whose_client_went_away_stops_and_is_not_logged(service, monkeypatch):
    import time

    slow_explain = service.explainer.explain

    def slow(*a, **k):
        time.sleep(0.5)
        return slow_explain(*a, **k)

    monkeypatch.setattr(service.explainer, "explain", slow)
    before = service.store.count()
    service.bot.settings.response_mode = "generate"
    try:
        stream = service.respond_stream("where is my package", "s-gone")
        first = next(stream)
        assert isinstance(first, str)
        stream.close()  # what Gradio does when the tab closes
        time.sleep(1.0)
    finally:
        service.bot.settings.response_mode = "template"
    assert service.store.count() == before and service.conversation("s-gone").turns == []


def test_turns_that_arrive_together_are_batched_and_answer_as_one_at_a_time(service):
    import threading

    texts = ["cancel my order", "where is my package", "I want a refund please", "hello there", "track order",
             "cancel it now"]
    single = [service.explained(service.respond(t, f"single-{i}")) for i, t in enumerate(texts)]
    batches = []
    run = service.batcher.run
    service.batcher.run = lambda items: (batches.append(len(items)), run(items))[1]
    together = [None] * len(texts)
    gate = threading.Barrier(len(texts))

    def go(i):
        gate.wait()
        together[i] = service.explained(service.respond(texts[i], f"together-{i}"))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(texts))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        service.batcher.run = run
    assert max(batches) > 1  # some turns did share a batch
    for a, b in zip(single, together):
        assert (a.intent, a.fallback, a.reply is not None) == (b.intent, b.fallback, True)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert [w for w, _ in a.attributions] == [w for w, _ in b.attributions]
        assert [s for _, s in a.attributions] == pytest.approx([s for _, s in b.attributions], abs=1e-3)


def test_explaining_a_batch_equals_explaining_each(service):
    texts = ["cancel my order", "where is my package please", "hi"]
    batch = service.explainer.explain_batch(texts, [None, "track_order", None])
    for text, intent, b in zip(texts, [None, "track_order", None], batch):
        a = service.explainer.explain(text, intent)
        assert (a.intent, a.predicted, [w.word for w in a.words]) == (b.intent, b.predicted, [w.word for w in b.words])
        assert [w.raw for w in a.words] == pytest.approx([w.raw for w in b.words], abs=1e-5)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-6) and a.delta == pytest.approx(b.delta, abs=1e-4)


def test_generated_replies_are_batched_and_equal_one_at_a_time(service):
    from bot.dialogue import Conversation
    from bot.generate import fill
    from bot.turn import turns
    from ui.service import Cancelled

    bot = service.bot
    texts = ["where is my package", "cancel my order please", "I want my money back", "talk to a human"]
    bot.settings.response_mode = "generate"
    try:
        single = [bot.turn(t, Conversation()).reply for t in texts]
        streamed: dict[int, list[str]] = {i: [] for i in range(len(texts))}

        def stream(i):
            def on_text(so_far):
                if i == 1 and streamed[1]:
                    raise Cancelled()  # this row's tab closed after its first words: only it stops
                streamed[i].append(so_far)
            return on_text

        convs = [Conversation() for _ in texts]
        together = turns(bot, texts, convs, on_texts=[stream(i) for i in range(len(texts))])
    finally:
        bot.settings.response_mode = "template"
    assert isinstance(together[1], Cancelled)
    assert all(c.turns == [] for c in convs)  # the caller keeps (or logs) a turn, not bot/turn.py
    for i in (0, 2, 3):
        assert together[i].reply == single[i]  # one batch, the same replies as one at a time
        assert together[i].as_turn().bot == single[i]
        if streamed[i]:  # the generated text as it grew; the reply is it, or (the model's own score says it is
            # poor) the authored response that replaces it
            authored = [fill(r, bot.placeholders) for r in bot.responses[together[i].intent]]
            assert single[i].startswith(streamed[i][-1]) or single[i] in authored
            assert all(len(a) <= len(b) for a, b in zip(streamed[i], streamed[i][1:]))
    assert sum(map(len, streamed.values())) > 0


def test_words_past_the_length_limit_are_served_and_logged_as_not_read(service):
    from ui.web import decision_markdown, highlights

    a = service.explained(service.respond("cancel my order " + " ".join(f"w{i}" for i in range(80)), "s-long"))
    scores = [s for _, s in a.attributions]
    assert scores[0] is not None and scores[-1] is None
    assert scores.index(None) > 3 and all(s is None for s in scores[scores.index(None):])
    row = service.store.get(a.turn_id)
    assert [s for _, s in row["attributions"]] == scores  # null in the audit log, not a 0 that looks measured
    assert highlights(a.attributions)[-1] == ("w79", None)  # shown unmarked
    assert f"the last {scores.count(None)} word(s) were cut" in decision_markdown(a)


def test_an_auditors_correction_goes_into_the_bot_file_and_training_without_raw_pii(trained_tiny, tmp_path):
    """Audit store → `candor data corrections` → the bot file's `corrections:` section → training records: the text
    travels redacted all the way; the same turn corrected again replaces its entry; the rest of the file is kept."""
    import shutil

    from bot.spec import OUT_OF_SCOPE, load_bot
    from bot.train import Trainer
    from ui.cli import main

    db = tmp_path / "audit.sqlite"
    service = ChatService(trained_tiny, str(db))
    a = service.respond("hi, I'm Margaret Okonkwo, card 4111 1111 1111 1111, where is my money back", "s")
    b = service.respond("recommend a good novel", "s")
    assert "<PERSON>" in a.text and "<CREDIT_CARD>" in a.text
    service.store.correct(a.turn_id, "track_order", "alice")
    service.store.correct(b.turn_id, OUT_OF_SCOPE, "alice")
    bot = tmp_path / "bot.yaml"
    shutil.copy(trained_tiny.parent / "tiny.yaml", bot)
    with bot.open("a", encoding="utf-8") as f:
        f.write("# a comment the export keeps\n")
    assert main(["data", "corrections", str(bot), "--audit-db", str(db)]) == 0
    service.store.correct(a.turn_id, "get_refund", "bob")  # changed mind: the entry is replaced, not added
    assert main(["data", "corrections", str(bot), "--audit-db", str(db)]) == 0
    text = bot.read_text(encoding="utf-8")
    assert "Okonkwo" not in text and "4111" not in text and "# a comment the export keeps" in text
    assert text.count("turn: ") == 2 and "corrected_by: bob" in text and f"model_version: {service.version}" in text
    spec, _ = load_bot(bot)
    assert [e.text for e in spec.intents["get_refund"].examples].count(a.text) == 1
    assert a.text not in [e.text for e in spec.intents["track_order"].examples]
    assert b.text in [e.text for e in spec.out_of_scope]
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    assert any(r.text == a.text and r.intent == "get_refund" for r in trainer.train_records + trainer.val_records)
