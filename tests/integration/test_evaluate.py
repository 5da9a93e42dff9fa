import io
import json
from types import SimpleNamespace

from bot.model import read_card
from ui.cli import main
from ui.verbs.chat import chat


def test_eval_writes_the_four_reports(trained_tiny, tiny_bot_file, tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["eval", str(trained_tiny), "--bot", str(tiny_bot_file), "-o", str(out)]) == 0
    for name in ("intent_report.json", "intent_errors.json", "intent_confusion_matrix.png", "intent_histogram.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "intent_report.json").read_text())
    assert set(report["cancel_order"]) >= {"precision", "recall", "f1-score", "support", "confused_with"}
    assert report["cancel_order"]["support"] == 3
    summary = report["summary"]
    assert summary["oos_examples"] == 1 and summary["oos_recall"] in (0.0, 1.0)
    assert summary["test_examples"] == 13 and 0.5 <= summary["accuracy"] <= 1.0
    errors = json.loads((out / "intent_errors.json").read_text())
    wrong = sum(1 for e in errors if e["intent"] != "out_of_scope")
    assert wrong == round((1 - summary["accuracy"]) * 12)
    assert (out / "intent_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert read_card(trained_tiny)["metrics"]["accuracy"] == summary["accuracy"]
    assert "Accuracy" in (trained_tiny / "model_card.md").read_text()
    assert "accuracy" in capsys.readouterr().out


def test_chat_repl_shows_reply_intent_confidence_and_fallback(trained_tiny):
    stdin = io.StringIO("cancel my order please\nzzzz qqqq xxxx\n/reset\n/quit\n")
    stdout = io.StringIO()
    assert chat(SimpleNamespace(model=str(trained_tiny), device="cpu", mode=None), stdin, stdout) == 0
    text = stdout.getvalue()
    assert "intent cancel_order, confidence" in text
    assert text.count("bot> ") == 2 and "(new conversation)" in text
    assert "no fallback" in text or "FALLBACK" in text


def test_validate_cli_rejects_broken_file_with_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfallback: hm\nintents:\n  a:\n    examples: [hi, hello]\n  b:\n    examples: [bye, ciao]\n"
                   "  a:\n    examples: [hey]\n")
    assert main(["data", "validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:8: error: duplicate key 'a' (first defined on line 4)" in out and "INVALID" in out


def test_import_cli_writes_a_valid_bot(tmp_path, capsys):
    src = tmp_path / "d.csv"
    src.write_text("text,intent\nhi,greet\nhello,greet\nbye,leave\nsee you,leave\n")
    out = tmp_path / "bot.yaml"
    assert main(["data", "import", "csv", str(src), "-o", str(out)]) == 0
    assert main(["data", "validate", str(out)]) == 0
    assert "OK:" in capsys.readouterr().out
