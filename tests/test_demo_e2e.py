"""The README's main job, end to end: train the bundled demo bot with no arguments, chat, evaluate.
Takes a quarter of an hour on 2 CPU cores; CI runs the short form (6 fine-tuning epochs, not the bot file's 12,
about half the time)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from bot.generate import fill
from bot.model import read_card
from tests.conftest import in_ci

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _candor(cwd, *args, stdin=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ui.cli", *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    # no arguments: the bundled demo bot, as the README's command (CI's short form: fewer epochs)
    res = _candor(cwd, "train", "-q", *(("--epochs", "6") if in_ci() else ()), timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    return cwd


def test_demo_chat_cancels_an_order(workdir):
    res = _candor(workdir, "chat", stdin="I want to cancel my order\n/quit\n")
    assert res.returncode == 0, res.stderr
    card = read_card(workdir / "models" / "support_demo")
    replies = [fill(r, card["placeholders"]) for r in card["intents"]["cancel_order"]["responses"]]
    assert "[intent cancel_order, confidence" in res.stdout and "no fallback" in res.stdout, res.stdout
    assert any(r in res.stdout for r in replies), res.stdout


def test_demo_chat_reads_a_follow_up_in_its_conversation(workdir):
    """A follow-up that names no intent ("it's order 4432") is read after the request before it: after a request
    to cancel it is about cancelling; after /reset, alone, it is not. The issue's own longer example is at least
    ranked first as cancel_order after the request (the 4M-parameter demo model may still be unsure of it)."""
    res = _candor(workdir, "chat", stdin="I want to cancel my order\nit's order 4432\n/reset\n"
                                          "I want to cancel my order\nit's order 4432, placed yesterday\n/reset\n"
                                          "it's order 4432\n/quit\n")
    assert res.returncode == 0, res.stderr
    decisions = [line.strip() for line in res.stdout.splitlines() if line.strip().startswith("[intent ")]
    assert len(decisions) == 5, res.stdout
    assert all(d.startswith("[intent cancel_order,") for d in decisions[:4]), res.stdout
    assert "no fallback" in decisions[0] and "no fallback" in decisions[1], res.stdout
    assert not (decisions[4].startswith("[intent cancel_order,") and "no fallback" in decisions[4]), res.stdout


def test_demo_eval_writes_reports_and_loads_in_plain_transformers(workdir):
    res = _candor(workdir, "eval")
    assert res.returncode == 0, res.stderr
    model_dir = workdir / "models" / "support_demo"
    for name in ("intent_report.json", "intent_errors.json", "intent_confusion_matrix.png", "intent_histogram.png",
                 "intent_reliability.png", "oos_histogram.png"):
        assert (model_dir / "reports" / name).is_file()
    metrics = read_card(model_dir)["metrics"]
    assert metrics["test_examples"] == 457 and metrics["oos_examples"] == 10 and metrics["accuracy"] > 0.9, metrics
    # outlier exposure: the demo's own out-of-scope questions (weather on Mars...) fall back at the default threshold
    assert metrics["oos_recall"] >= 0.7 and metrics["accuracy_with_fallback"] > 0.9, metrics
    assert "out of scope: recall" in res.stdout and "suggested threshold" in res.stdout
    # the distance rule ships with the demo model and is measured
    assert (model_dir / "neighbours.safetensors").is_file() and "distance rule: threshold" in res.stdout
    assert 0 <= metrics["unfamiliar_rate"] <= 0.05 and metrics["distance_auroc"] > 0.8, metrics
    clf = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert clf.config.num_labels == 27 and "cancel_order" in clf.config.label2id
