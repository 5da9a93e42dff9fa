"""bot/turn.py: one turn, read → classify → fallback → reply → explain, on a tiny untrained model."""
import argparse
import io
import json

import pytest
import torch

from bot.classify import decide_each, predict
from bot.dialogue import Bot, Conversation
from bot.spec import ModelSettings, Turn
from bot.turn import Answer, turn, turns

INTENTS = ["cancel_order", "track_order", "get_refund"]
TEXTS = ["cancel my order", "where is my package", "I want my money back", "refund please", "hello there"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A Candor model directory with random weights: the turn's plumbing, not what a model learned."""
    from bot.model import CARD_JSON, build
    from bot.tokenizer import fit_bpe

    torch.manual_seed(0)
    settings = ModelSettings(n_layer=1, n_head=2, n_embd=32, vocab_size=300, max_length=48, dropout=0.0)
    tok = fit_bpe(TEXTS * 4 + ["it is number 4432", "my card was charged twice"], settings.vocab_size)
    out = tmp_path_factory.mktemp("untrained") / "model"
    build(settings, tok, INTENTS).save(out, tok)
    card = {"bot": {"name": "untrained"}, "fallback": "Sorry?", "model": {"max_length": settings.max_length},
            "settings": {"classify_context": 1, "distance_quantile": 0, "confidence_threshold": 0.0,
                         "ambiguity_threshold": 0.0, "max_reply_tokens": 8},
            "intents": {n: {"responses": [f"Reply for {n}."]} for n in INTENTS}}  # one each: replies are certain
    (out / CARD_JSON).write_text(json.dumps(card), encoding="utf-8")
    return out


@pytest.fixture
def bot(model_dir):
    return Bot(model_dir)


class Read:
    """A stand-in for safety.guard.read_message: records what it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, message):
        self.seen.append(message)
        return argparse.Namespace(text=message.replace("Ngozi", "<PERSON>"), found=["PERSON"] * ("Ngozi" in message))


class Explained:
    def __init__(self, text, intent, earlier):
        self.text, self.intent, self.earlier, self.delta = text, intent, earlier, 0.01

    def attributions(self):
        return [(w, 0.5) for w in self.text.split()]


def test_turns_decide_by_the_one_fallback_rule_and_answer_as_one_at_a_time(bot):
    convs = [Conversation([Turn("cancel my order", "ok", "cancel_order")]) if i % 2 else Conversation()
             for i in range(len(TEXTS))]
    together = turns(bot, TEXTS, convs)
    probs, dist = predict(bot.model, bot.enc, TEXTS, contexts=[bot.earlier_turns(c) for c in convs])
    for a, d, text, conv in zip(together, decide_each(probs, bot.model.intents, bot.settings, dist), TEXTS, convs):
        assert isinstance(a, Answer) and a.text == text and a.response_mode == "template"
        assert {k: getattr(a, k) for k in vars(d)} == vars(d)  # the decision, as the one rule made it
        alone = turns(bot, [text], [conv])[0]
        assert (alone.intent, alone.reply) == (a.intent, a.reply) and alone.confidence == pytest.approx(a.confidence)
        assert a.reply == f"Reply for {a.intent}." and a.explanation is None and a.attributions == []
    assert [len(c.turns) for c in convs] == [0, 1, 0, 1, 0]  # turns keeps no conversation: its caller does


def test_a_fallback_answers_with_the_fallback_text_and_names_its_reason(bot):
    bot.settings.confidence_threshold = 1.01  # nothing is that sure
    answers = turns(bot, TEXTS[:2], [Conversation(), Conversation()])
    assert all(a.fallback and a.fallback_reason == "low_confidence" and a.reply == "Sorry?" for a in answers)
    assert all(a.as_turn() == Turn(a.text, "Sorry?", None) for a in answers)  # a fallback keeps no intent
    bot.settings.confidence_threshold, bot.settings.ambiguity_threshold = 0.0, 1.01
    assert {a.fallback_reason for a in turns(bot, TEXTS[:2], [Conversation(), Conversation()])} == {"ambiguous"}


def test_read_and_explain_come_from_above_and_see_what_the_classifier_read(bot):
    read, calls = Read(), []

    def explain(texts, intents, earlier):
        calls.append((texts, intents, earlier))
        return [Explained(*x) for x in zip(texts, intents, earlier)]

    conv = Conversation([Turn("cancel my order", "ok", "cancel_order")])
    a = turn(bot, "hi, my name is Ngozi", conv, read=read, explain=explain)
    assert read.seen == ["hi, my name is Ngozi"]  # read first, once, on the raw message
    assert a.text == "hi, my name is <PERSON>" and a.redacted_types == ["PERSON"]
    assert calls == [(["hi, my name is <PERSON>"], [a.intent], [["cancel my order"]])]  # the decided intent, after
    # the earlier turn the classifier read
    assert a.attributions == [(w, 0.5) for w in a.text.split()] and a.explanation_delta == 0.01
    assert a.intent == bot.classify_batch([a.text], [conv])[0].intent
    data = a.to_dict()
    assert data["text"] == a.text and data["fallback_reason"] == a.fallback_reason and "explanation" not in data
    assert conv.turns == [Turn("cancel my order", "ok", "cancel_order")]


def test_a_stream_that_stops_fails_only_its_own_turn_and_is_not_explained(bot, monkeypatch):
    class Stop(Exception):
        pass

    def stop(so_far):
        raise Stop()

    def replies(prompts, on_texts):  # as generate mode streams: a stream that raises makes its item that exception
        out = []
        for (text, intent, _), on_text in zip(prompts, on_texts):
            try:
                if on_text:
                    on_text("Sure")
                out.append(f"Sure, {intent}.")
            except Stop as e:
                out.append(e)
        return out

    monkeypatch.setattr(bot, "replies", replies)
    explained = []
    out = turns(bot, TEXTS[:3], [Conversation()] * 3, on_texts=[None, stop, None],
                explain=lambda texts, intents, earlier: explained.extend(texts) or [None] * len(texts))
    assert isinstance(out[1], Stop) and all(isinstance(a, Answer) and a.reply for a in (out[0], out[2]))
    assert explained == [TEXTS[0], TEXTS[2]]
    with pytest.raises(Stop):
        turn(bot, TEXTS[1], Conversation(), read=Read(), on_text=stop)


def test_bot_turn_keeps_the_turn_in_its_conversation(bot):
    conv = Conversation()
    a = bot.turn("where is my package", conv)
    b = bot.turn("it is number 4432", conv)
    assert conv.turns == [a.as_turn(), b.as_turn()] and [t.user for t in conv.turns] == [a.text, b.text]


def test_candor_chat_explain_and_the_service_read_a_message_through_one_path(model_dir, tmp_path, monkeypatch):
    """Each reads the message with safety.guard.read_message (guard, then redaction): it is what redaction
    returns that each classifies, so `candor explain` explains the decision the served bot makes."""
    import safety.pii
    from safety.pii import Redaction
    from ui.service import ChatService
    from ui.verbs.chat import chat
    from ui.verbs.explain import explain

    seen = []

    def redact(text, ner=None):
        seen.append(text)
        return Redaction("my card <CREDIT_CARD> was charged twice", ["CREDIT_CARD"], [])

    monkeypatch.setattr(safety.pii, "redact", redact)
    message = "my  card 4111 1111 1111 1111\x00 was charged twice"  # guarded first: spaces, control character

    out = io.StringIO()
    chat(argparse.Namespace(model=str(model_dir), device="cpu", mode=None), io.StringIO(message + "\n"), out)
    service = ChatService(model_dir, str(tmp_path / "audit.sqlite"), explain_steps=4)
    served = service.explained(service.respond(message, "s"))
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert explain(argparse.Namespace(model=str(model_dir), text=message, intent=None, reply=False, json=True,
                                      html=None, no_colour=True, steps=4, evaluate=False)) == 0
    explained = json.loads(__import__("sys").stdout.getvalue())

    # the raw message reached redaction three times, guarded (the service's warm-up and the audit store's own
    # second pass call it too, on other text)
    assert [t for t in seen if "4111" in t] == ["my card 4111 1111 1111 1111 was charged twice"] * 3
    assert served.text == explained["text"] == "my card <CREDIT_CARD> was charged twice"
    assert (explained["intent"], explained["predicted"]) == (served.intent, served.intent)
    assert explained["confidence"] == pytest.approx(served.confidence, abs=1e-5)
    assert [w["word"] for w in explained["words"]] == [w for w, _ in served.attributions]
    assert f"[intent {served.intent}, confidence {served.confidence:.2f}" in out.getvalue()
    assert service.store.get(served.turn_id)["text"] == served.text
