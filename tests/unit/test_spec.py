import yaml
import pytest

from bot.spec import BotFileError, dump_bot, load_bot, parse_bot
from tests.conftest import tiny_bot_dict

BROKEN = """\
name: broken
fallback: Sorry?
settings:
  confidence_threshold: 0.3
  colour: blue
intents:
  greet:
    examples:
      - hello
      - hi there
    responses: [Hi!]
  bye:
    examples: []
  greet:
    examples:
      - good morning
test:
  - text: good morning
    intent: greet
  - text: see you
    intent: farewell
"""


def _lines(problems):
    return {(p.line, p.severity): p.message for p in problems}


def test_valid_tiny_bot_parses(tiny_bot_file):
    spec, problems = load_bot(tiny_bot_file)
    assert list(spec.intents) == ["cancel_order", "track_order", "get_refund", "contact_human_agent"]
    assert all(len(i.examples) == 24 for i in spec.intents.values())
    assert spec.model.n_layer == 2 and spec.settings.confidence_threshold == 0.3
    assert [p for p in problems if p.severity == "error"] == []


def test_broken_bot_reports_file_line_and_reason(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    spec, problems = load_bot(path, strict=False)
    text = [str(p) for p in problems]
    assert any(s.startswith(f"{path}:5: error: unknown setting 'settings.colour'") for s in text), text
    assert any(s.startswith(f"{path}:14: error: duplicate key 'greet' (first defined on line 7)") for s in text), text
    assert any(f"{path}:18: error: train/test leakage" in s and "good morning" in s for s in text), text
    assert any(f"{path}:20: error: test example uses unknown intent 'farewell'" in s for s in text), text
    with pytest.raises(BotFileError) as err:
        load_bot(path)
    assert "duplicate key 'greet'" in str(err.value)


def test_empty_intent_and_conflicting_labels(tmp_path):
    bot = tiny_bot_dict()
    bot["intents"]["track_order"]["examples"].append(bot["intents"]["cancel_order"]["examples"][0].upper())
    bot["intents"]["empty"] = {"examples": [], "responses": ["x"]}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    _, problems = load_bot(path, strict=False)
    msgs = [p.message for p in problems if p.severity == "error"]
    assert "intent 'empty' has no examples" in msgs
    assert any("is labelled 'track_order' here and 'cancel_order' on line" in m for m in msgs), msgs


def test_encoding_problems_are_located(tmp_path):
    path = tmp_path / "enc.yaml"
    good = yaml.safe_dump(tiny_bot_dict(), sort_keys=False).encode()
    lines = good.split(b"\n")
    lines[3] = lines[3] + b" \xff\xfe"
    path.write_bytes(b"\n".join(lines))
    _, problems = load_bot(path, strict=False)
    assert any(p.line == 4 and "not valid UTF-8" in p.message for p in problems), [str(p) for p in problems]


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "syntax.yaml"
    path.write_text("name: x\nintents:\n  a: [1, 2\n  b: 3\n")
    _, problems = load_bot(path, strict=False)
    assert problems and problems[0].line is not None and "invalid YAML" in problems[0].message


def test_dump_then_load_round_trips(tmp_path, tiny_bot_file):
    spec, _ = load_bot(tiny_bot_file)
    out = tmp_path / "again.yaml"
    dump_bot(spec, out)
    again, problems = load_bot(out)
    assert again.to_dict() | {"name": "x"} == spec.to_dict() | {"name": "x"}


def test_bad_setting_type_and_mode():
    problems = []
    bot = tiny_bot_dict()
    bot["settings"] = {"response_mode": "telepathy", "context_turns": "three"}
    parse_bot(yaml.safe_dump(bot), "x.yaml", problems)
    msgs = " | ".join(p.message for p in problems)
    assert "'settings.context_turns' must be a int" in msgs
    assert "response_mode must be 'template' or 'generate'" in msgs


def test_corrections_are_examples_of_their_intent_and_a_bad_one_is_located(tmp_path):
    """`corrections:` (written by `candor data corrections`): each entry becomes an example of its intent, or of
    out_of_scope, with its extra keys (where it came from) allowed; an unknown intent or a missing text is an
    error at its line."""
    bot = tiny_bot_dict()
    bot["corrections"] = [
        {"text": "scrap the order, <PERSON> does not want it", "intent": "cancel_order", "turn": 7,
         "served_intent": "track_order", "model_version": "tiny@abc", "corrected_by": "alice"},
        {"text": "book me a table for two", "intent": "out_of_scope", "turn": 8},
    ]
    spec, problems = load_bot(_write(tmp_path, bot), strict=False)
    assert not [p for p in problems if p.severity == "error"], problems
    assert "scrap the order, <PERSON> does not want it" in [e.text for e in spec.intents["cancel_order"].examples]
    assert "book me a table for two" in [e.text for e in spec.out_of_scope]
    bot["corrections"] += [{"text": "where is it", "intent": "track_parcel"}, {"intent": "cancel_order"}]
    path = _write(tmp_path, bot)
    _, problems = load_bot(path, strict=False)
    errors = [p for p in problems if p.severity == "error"]
    assert any("unknown intent 'track_parcel'" in p.message and p.line for p in errors), errors
    assert any("each corrections entry needs 'text' and 'intent'" in p.message for p in errors), errors


def _write(tmp_path, bot) -> str:
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False), encoding="utf-8")
    return str(path)
