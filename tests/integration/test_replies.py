"""Generate mode grounded in the authored responses, and reply measures against held-out references."""
import json

import pytest
import yaml

from bot.dialogue import Bot
from bot.generate import repetition, reply_scores
from bot.spec import Settings
from tests.conftest import tiny_bot_dict
from ui.cli import main


@pytest.fixture(scope="module")
def bot(trained_tiny):
    return Bot(trained_tiny)


def test_repetition_counts_repeated_word_trigrams():
    assert repetition("please provide me with the details") == 0.0
    assert repetition("the specific details the specific details the specific details") == pytest.approx(4 / 7)
    assert repetition("too short") == 0.0


def test_the_model_scores_a_trained_reply_above_one_of_another_intent(bot):
    prompt = ("cancel my order please", "cancel_order", [])
    own, other = bot.responses["cancel_order"][0], bot.responses["track_order"][0]
    scores = reply_scores(bot.model, bot.enc, prompt, [own, other, "zebra quantum lattice"])
    assert scores[0] > scores[1] > scores[2]  # mean log-probability per token: its own reply best, nonsense worst
    assert all(s < 0 for s in scores)
    one = reply_scores(bot.model, bot.enc, prompt, [other])[0]
    assert one == pytest.approx(scores[1], abs=1e-4)  # batching (padding) does not change a score


def test_generate_mode_keeps_a_good_generation_and_grounds_a_poor_one(bot, monkeypatch):
    prompt = ("cancel my order please", "cancel_order", [])
    best = bot.grounded(prompt)[1]
    assert best in bot.responses["cancel_order"]
    assert bot.choose(prompt, best) == (best, "grounded", best)  # only as good as the best authored one: not enough
    monkeypatch.setattr("bot.dialogue.GENERATE_MARGIN", 0.0)
    assert bot.choose(prompt, best) == (best, "generated", best)
    monkeypatch.setattr("bot.dialogue.GENERATE_MARGIN", 1.0)
    assert bot.choose(prompt, "order order order order order order order") == (best, "grounded", best)  # loops
    assert bot.choose(prompt, "zebra quantum lattice") == (best, "grounded", best)  # scored below the authored ones
    assert bot.choose(prompt, "") == (best, "grounded", best)
    monkeypatch.setitem(bot.responses, "cancel_order", [])
    assert bot.choose(prompt, "zebra quantum lattice") == ("zebra quantum lattice", "generated", None)  # nothing to ground in


def test_generate_mode_replies_say_where_they_came_from(bot, monkeypatch):
    monkeypatch.setattr(bot.settings, "response_mode", "generate")
    sources = []
    out = bot.replies([("cancel my order please", "cancel_order", []), ("where is my parcel", "track_order", [])],
                      sources=sources)
    assert len(out) == 2 and all(out) and set(sources) <= {"generated", "grounded"}
    for text, source, intent in zip(out, sources, ("cancel_order", "track_order")):
        assert source == "generated" or text in bot.responses[intent]


def test_eval_measures_replies_against_held_out_references(trained_tiny, tmp_path, capsys):
    spec = tiny_bot_dict()
    for t in spec["test"]:
        if t["intent"] != "out_of_scope":
            t["reply"] = spec["intents"][t["intent"]]["responses"][0] + " Anything else?"
    source = tmp_path / "b.yaml"
    source.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "reports"
    assert main(["eval", str(trained_tiny), "--bot", str(source), "-o", str(out), "--replies"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "reply_report.json").read_text())
    ways = report["ways"]
    assert report["examples"] == 12 and set(ways) == {"template", "grounded", "generated", "generate mode"}
    assert all(0 <= m["rouge_l"] <= 1 and 0 <= m["repetition"] <= 1 for m in ways.values())
    sample, own = report["samples"][0], spec["intents"][spec["test"][0]["intent"]]["responses"]
    assert sample["reference"] == own[0] + " Anything else?"
    assert sample["grounded"] in own and sample["template"] in own
    assert sample["generate mode"] in (sample["generated"], sample["grounded"])
    assert ways["template"]["rouge_l"] > 0.3  # every template shares most of its words with the reference
    assert 0 <= ways["generate mode"]["kept_generated"] <= 1
    assert "ROUGE-L" in printed and "generate mode" in printed
    assert json.loads((out / "intent_report.json").read_text())["summary"]["replies"]["examples"] == 12
    for limit, n in (("5", 5), ("0", 12)):  # 0: all of them
        assert main(["eval", str(trained_tiny), "--bot", str(source), "-o", str(out), "--replies",
                     "--reply-limit", limit]) == 0
        assert json.loads((out / "reply_report.json").read_text())["examples"] == n
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", str(trained_tiny), "--replies", "--reply-limit", "-1"])
    assert "--reply-limit: must be 0 or above, got -1" in capsys.readouterr().err


def test_test_entries_may_carry_a_reference_reply_and_nothing_else(tmp_path):
    from bot.spec import parse_bot

    spec = tiny_bot_dict()
    spec["test"][0]["reply"] = "Done."
    assert parse_bot(yaml.safe_dump(spec)).test[0].reply == "Done."
    spec["test"][0]["answer"] = "typo"
    problems = []
    parse_bot(yaml.safe_dump(spec), "t.yaml", problems)
    assert any("unknown key(s) in a test entry: answer" in p.message for p in problems)
    assert Settings().context_turns == 3
