import json

import pytest

from bot import importers
from bot.spec import BotFileError, dump_bot, load_bot
from tests.conftest import SHARED

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")


def test_csv_import_and_bad_row_line(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text('text,intent,response\n"hi, there",greet,Hello!\nbye now,bye,\nhello,greet,Hello!\n')
    spec = importers.from_csv(good)
    assert [e.text for e in spec.intents["greet"].examples] == ["hi, there", "hello"]
    assert spec.intents["greet"].responses == ["Hello!"] and spec.intents["bye"].responses == []
    bad = tmp_path / "bad.csv"
    bad.write_text("text,intent\nhello,greet\n,greet\n")
    with pytest.raises(BotFileError) as err:
        importers.from_csv(bad)
    assert f"{bad}:3: error: row has an empty text or intent" in str(err.value)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sentence,label\nhi,greet\n")
    with pytest.raises(BotFileError, match="must have columns 'text'"):
        importers.from_csv(wrong)


@needs_shared
def test_banking77(tmp_path):
    spec = importers.from_banking77(SHARED / "banking77")
    assert len(spec.intents) == 77 and len(spec.examples) == 10003
    # the official test split repeats a few training texts (train.csv has them with a leading newline)
    assert 3070 < len(spec.test) < 3080 and f"{3080 - len(spec.test)} official test texts" in spec.description
    out = tmp_path / "b77.yaml"
    dump_bot(spec, out)
    again, problems = load_bot(out)  # no errors: no leakage, no duplicates
    assert len(again.examples) == 10003


@needs_shared
def test_bitext_has_responses_with_placeholders_and_no_leakage(tmp_path):
    spec = importers.from_bitext(SHARED / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv",
                                 responses_per_intent=3)
    assert len(spec.intents) == 27
    assert all(len(i.responses) == 3 for i in spec.intents.values())
    responses = [r for i in spec.intents.values() for r in i.responses]
    assert not any("{{" in r for r in responses)
    assert any("{website_name}" in r or "{customer_support_phone_number}" in r for r in responses)
    assert 400 < len(spec.test) < 500
    # the authored responses come from training rows: none is a test row's held-out reference reply
    assert not {(e.intent, e.reply) for e in spec.test} & {(n, r) for n, i in spec.intents.items() for r in i.responses}
    out = tmp_path / "bitext.yaml"
    dump_bot(spec, out)
    load_bot(out)  # raises on leakage or duplicates across intents


@needs_shared
def test_sgd_multi_turn():
    spec = importers.from_sgd([SHARED / "sgd_banking_subset" / "train"], services=["Banks_1"])
    assert set(spec.intents) == {"CheckBalance", "TransferMoney"}
    assert len(spec.intents["CheckBalance"].examples) > 100
    assert spec.dialogues and all(len(d) >= 2 for d in spec.dialogues[:20])
    first = spec.dialogues[0]
    assert first[0].intent in spec.intents and first[0].bot
    assert spec.intents["TransferMoney"].responses


def test_sgd_minimal_file(tmp_path):
    dialogue = {"dialogue_id": "1", "services": ["Banks_1"], "turns": [
        {"speaker": "USER", "utterance": "What's my balance?", "frames": [
            {"service": "Banks_1", "actions": [{"act": "INFORM_INTENT"}], "state": {"active_intent": "CheckBalance"}}]},
        {"speaker": "SYSTEM", "utterance": "Checking or savings?", "frames": []},
        {"speaker": "USER", "utterance": "Checking.", "frames": [
            {"service": "Banks_1", "actions": [{"act": "INFORM"}], "state": {"active_intent": "CheckBalance"}}]},
        {"speaker": "SYSTEM", "utterance": "You have $5.", "frames": []},
    ]}
    (tmp_path / "dialogues_001.json").write_text(json.dumps([dialogue]))
    spec = importers.from_sgd([tmp_path])
    assert [e.text for e in spec.intents["CheckBalance"].examples] == ["What's my balance?"]
    assert spec.intents["CheckBalance"].responses == ["Checking or savings?"]
    assert [(t.user, t.bot, t.intent) for t in spec.dialogues[0]] == [
        ("What's my balance?", "Checking or savings?", "CheckBalance"), ("Checking.", "You have $5.", "CheckBalance")]
    (tmp_path / "dialogues_002.json").write_text("[{oops")
    with pytest.raises(BotFileError, match="dialogues_002.json:1: error: invalid JSON"):
        importers.from_sgd([tmp_path])


def test_rasa_nlu_and_domain(tmp_path):
    nlu = tmp_path / "nlu.yml"
    nlu.write_text('version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hey\n    - hello there\n'
                   '- intent: book_flight\n  examples: |\n    - fly to [Berlin](city)\n'
                   '    - a ticket to [Paris]{"entity": "city"} please\n- synonym: NYC\n  examples: |\n    - new york\n')
    domain = tmp_path / "domain.yml"
    domain.write_text("responses:\n  utter_greet:\n  - text: Hi!\n  utter_default:\n  - text: Come again?\n")
    spec = importers.from_rasa(nlu, domain)
    assert [e.text for e in spec.intents["book_flight"].examples] == ["fly to Berlin", "a ticket to Paris please"]
    assert spec.intents["greet"].responses == ["Hi!"] and spec.fallback == "Come again?"
    assert set(spec.intents) == {"greet", "book_flight"}
