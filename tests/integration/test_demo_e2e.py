"""The README's main job, end to end: train the bundled demo bot with no arguments, chat, evaluate.
Takes a quarter of an hour on 2 CPU cores; CI runs the short form (6 fine-tuning epochs, not the bot file's 12,
about half the time)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from bot.generate import fill
from bot.model import read_card
from tests.conftest import in_ci

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


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


REQUEST, FOLLOW_UPS = "I want to cancel my order", ("it's order 4432", "it's order 4432, placed yesterday")
DECISION = re.compile(r"\[intent (?P<intent>\S+), confidence (?P<confidence>[0-9.]+)"
                      r"(?:, distance (?P<distance>[0-9.]+) \(unfamiliar beyond (?P<beyond>[0-9.]+)\))?, "
                      r"(?P<fallback>no fallback|FALLBACK \(\w+\))\]")


def _printed_as(line: str, d) -> None:
    """`line`, a decision `candor chat` printed, is decision `d` (to the digits it prints)."""
    m = DECISION.fullmatch(line)
    assert m, line
    assert m["intent"] == d.intent and m["fallback"].startswith("FALLBACK") == d.fallback, (line, d)
    assert abs(float(m["confidence"]) - d.confidence) <= 0.005 + 1e-4, (line, d)  # printed to 2 digits
    assert (m["distance"] is None) == (d.distance is None), (line, d)
    if d.distance is not None:  # printed to 3 digits
        assert abs(float(m["distance"]) - d.distance) <= 5e-4 + 1e-5, (line, d)
        assert abs(float(m["beyond"]) - d.distance_threshold) <= 5e-4 + 1e-5, (line, d)


def test_demo_chat_reads_a_follow_up_in_its_conversation(workdir):
    """A follow-up that names no intent ("it's order 4432") is read with the request before it: what `candor chat`
    prints for it is the classifier's decision on (request, follow-up), not on the follow-up alone; after /reset
    the same follow-up is read alone, and the request read again decides as it did the first time.

    The mechanism, not what the short demo training learned: which intent this model gives a follow-up after a
    request is a coin toss between CPUs and seeds (issue 27: on an Intel Xeon with AMX-BF16 the 6-epoch demo read
    the longer follow-up as delete_account 0.15, a fallback; on an AMD EPYC with AVX512-BF16, cancel_order), and
    the demo model reads 59% of held-out follow-ups as their request's intent (BENCHMARKS.md, "The distance rule,
    served"). That rate is measured by benchmarks/context.py; that a trained model reads a follow-up as its
    request's intent is tested on the float32 tiny bot (tests/integration/test_service.py)."""
    from bot.dialogue import Bot, Conversation
    from bot.spec import Turn
    from safety.guard import read_message

    follow, longer = FOLLOW_UPS
    res = _candor(workdir, "chat", stdin=f"{REQUEST}\n{follow}\n/reset\n{REQUEST}\n{longer}\n/reset\n{follow}\n/quit\n")
    assert res.returncode == 0, res.stderr
    printed = [line.strip() for line in res.stdout.splitlines() if line.strip().startswith("[intent ")]
    assert len(printed) == 5, res.stdout
    assert printed[2] == printed[0], res.stdout  # /reset: the request is read alone again, as at first

    bot = Bot(workdir / "models" / "support_demo")
    assert bot.settings.classify_context == 1  # the demo bot reads the previous user message
    request, follows = read_message(REQUEST).text, [read_message(t).text for t in FOLLOW_UPS]
    for f in follows:  # what the classifier reads for a follow-up: the earlier user message, then the follow-up
        alone, after = bot.enc.classify(f), bot.enc.classify(f, [request])
        assert len(after) > len(alone) and after[-len(alone):] == alone
        assert request in bot.tokenizer.decode(after[:-len(alone)])
    first = bot.classify(request)
    # the conversation `candor chat` keeps after the request: its served text, and its intent unless it fell back
    conversation = Conversation([Turn(request, "", None if first.fallback else first.intent)])
    read_after = bot.classify_batch(follows, [conversation, conversation])
    read_alone = bot.classify_batch(follows)
    for a, b in zip(read_after, read_alone):  # the earlier turn changes what the classifier gives
        assert (a.ranking, a.distance) != (b.ranking, b.distance), (a, b)
    # each printed decision is the classifier's on that message with the conversation's earlier user turn
    for line, expected in zip(printed, [first, read_after[0], first, read_after[1], read_alone[0]]):
        _printed_as(line, expected)


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
