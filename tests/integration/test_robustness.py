"""Robustness: TextAttack offline, the served-model wrapper, the attack report, augmentation and
adversarial training as views of the records (also under DP)."""
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from opacus.accountants import PRVAccountant

from bot.card import robustness_table
from bot.classify import predict_proba
from bot.dialogue import Bot
from bot.model import read_card
from bot.spec import ADVERSARIAL_RECIPES, AUGMENTERS, load_bot
from bot.train import Trainer
from safety.attack_report import Outcome, summarise
from safety.guard import read_message
from safety.privacy import DPSGD
from safety.recipes import offline
from tests.conftest import tiny_bot_dict

ROOT = Path(__file__).resolve().parents[2]

# Installed in a child process before anything else: any attempt to resolve a host name or open an
# internet socket is recorded and refused; the child exits 3 if there was one.
NET_GUARD = textwrap.dedent("""
    import atexit, os, socket, sys
    attempts = []
    def refuse(what):
        attempts.append(what)
        raise OSError(f"network blocked by the test: {what}")
    real_connect = socket.socket.connect
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(f"connect {address}")
        return real_connect(self, address)
    socket.socket.connect = connect
    socket.getaddrinfo = lambda host, *a, **k: refuse(f"getaddrinfo {host}")
    socket.gethostbyname = lambda host: refuse(f"gethostbyname {host}")
    def report():
        if attempts:
            sys.stderr.write("NETWORK ATTEMPTS: " + repr(attempts) + "\\n")
            sys.stderr.flush()
            os._exit(3)
    atexit.register(report)
""")


def _offline_python(code: str, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TA_CACHE_DIR", "NLTK_DATA")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", NET_GUARD + textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_guard_catches_network_use(tmp_path):
    res = _offline_python("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.org', timeout=2)\n"
                          "except Exception:\n    pass\n", tmp_path)
    assert res.returncode == 3 and "getaddrinfo example.org" in res.stderr, res.stderr[-500:]


def test_textattack_recipes_and_augmenters_run_offline_from_the_shipped_data(trained_tiny, tmp_path):
    """A fresh HOME (no TextAttack cache, no NLTK data): import, WordNet, stop words, every offline recipe and
    every augmenter, and `candor attack` itself, with the network blocked."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_tiny, model)
    res = _offline_python(f"""
        from safety.resources import textattack, NLTK_DATA
        ta = textattack()
        import nltk
        from nltk.corpus import stopwords, wordnet
        assert "the" in stopwords.words("english") and wordnet.synsets("refund")
        assert nltk.download("omw-1.4") is False and nltk.download("wordnet") is True
        from safety.augment import make
        for name in {list(AUGMENTERS)!r}:
            assert make(name)("please cancel my order from yesterday", 1), name
        from ui.cli import main
        code = main(["attack", {str(model)!r}, "--recipe", "{','.join(offline())}", "-n", "2", "-q"])
        assert code == 0, code
        print("OK", NLTK_DATA)
    """, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout and "| deepwordbug | 2 |" in res.stdout, res.stdout[-2000:]
    assert (tmp_path / ".cache" / "textattack" / "post_install_check_3").is_file()


def test_list_marks_recipes_that_need_downloads_as_unavailable(capsys):
    from ui.cli import main

    assert main(["attack", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("textfooler", "bae", "bert-attack", "a2t", "checklist"):
        assert f"{name}: unavailable — needs" in out, name
    assert set(ADVERSARIAL_RECIPES) <= set(offline()) and {"deepwordbug", "pruthi", "pwws"} <= set(offline())
    assert main(["attack", "--recipe", "deepwordbug,textfooler"]) == 2
    assert "recipe 'textfooler' is unavailable: it needs counter-fitted" in capsys.readouterr().err


def test_wrapper_batches_like_one_at_a_time_and_reads_like_the_served_turn(trained_tiny, tmp_path):
    from safety.attacks import ServedIntentModel
    from ui.service import ChatService

    bot = Bot(trained_tiny)
    wrapper = ServedIntentModel(bot.model, bot.enc, batch_size=3)
    texts = ["cancel my order", "where is my package, I ordered it a week ago and nothing", "refund",
             "talk to a human\x00 now", "ｃａｎｃｅｌ my order", "email me at jo@example.com about my refund",
             "   ", "x" * 1001]
    widths = []
    real = bot.model.intent_logits
    bot.model.intent_logits = lambda ids, mask: (widths.append(ids.shape[1]), real(ids, mask))[1]
    together = wrapper(texts)
    bot.model.intent_logits = real
    assert widths == sorted(widths) and max(widths) < bot.enc.max_length  # length-sorted, padded per batch only
    alone = np.concatenate([wrapper([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # what the model reads is what a served turn reads: normalised, redacted
    served = [read_message(t).text for t in texts[:6]]
    assert served[3] == "talk to a human now" and served[4] == "cancel my order" and "<EMAIL_ADDRESS>" in served[5]
    np.testing.assert_allclose(together[:6], predict_proba(bot.model, bot.enc, served).numpy(), atol=1e-5)
    service = ChatService(trained_tiny, str(tmp_path / "audit.sqlite"), explain_steps=4)
    for k, (t, p) in enumerate(zip(texts[:6], together[:6])):
        answer = service.respond(t, f"s{k}")  # one session each: no earlier message to read a follow-up with
        assert answer.intent == bot.model.intents[int(p.argmax())]
        assert answer.confidence == pytest.approx(float(p.max()), abs=1e-5)
    np.testing.assert_allclose(together[6:], 1 / len(bot.model.intents))  # refused: no decision


def _o(status, words=5, changed=0, queries=0, fallback=False):
    return Outcome("r", "t", "a", status, "p" if status == "successful" else "", "b", 0.5, fallback, words, changed,
                   queries)


def test_report_arithmetic_on_a_hand_made_case():
    rows = [_o("successful", 4, 1, 10, fallback=True), _o("successful", 5, 2, 20), _o("failed", queries=30),
            _o("failed", queries=40), _o("skipped")]
    s = summarise(rows)
    assert s == {"attacked": 5, "successful": 2, "failed": 2, "skipped": 1, "clean_accuracy": 0.8,
                 "accuracy_under_attack": 0.4, "attack_success_rate": 0.5, "words_perturbed": 0.325,
                 "queries": 25.0, "wrong_without_fallback": 0.5}
    report = {"model_version": "m@1", "created": "2026-11-23T00:00:00", "test_source": "t.yaml",
              "natural_noise": {"examples": 5, "description": "typos", "clean_accuracy": 0.8, "noisy_accuracy": 0.6},
              "recipes": [{"recipe": "deepwordbug", "stopped": None, **s},
                          {"recipe": "pwws", "stopped": "time budget", **summarise([])}]}
    table = robustness_table(report)
    assert "| deepwordbug | 5 | 80.0% | 40.0% | 50.0% | 32.5% | 25 | 50.0% |" in table
    assert "| pwws | 0 (stopped: time budget) | – | – | – | – | – | – |" in table
    assert "accuracy 80.0% → 60.0% on the same 5 messages" in table


def test_summary_agrees_with_textattacks_metrics(trained_tiny):
    from safety.attack_report import outcome, select
    from safety.attacks import ServedIntentModel, attack_one, build

    ta_metrics = __import__("textattack").metrics
    bot = Bot(trained_tiny)
    spec, _ = load_bot(read_card(trained_tiny)["bot"]["source_file"])
    examples = select(spec.test, bot.model.intents, 8)
    attack = build("deepwordbug", ServedIntentModel(bot.model, bot.enc))
    results = [attack_one(attack, e.text, bot.model.intents.index(e.intent), k) for k, e in enumerate(examples)]
    wrapper = ServedIntentModel(bot.model, bot.enc)
    s = summarise([outcome("deepwordbug", e, r, wrapper, bot.settings) for e, r in zip(examples, results)])
    rate = ta_metrics.AttackSuccessRate().calculate(results)
    assert s["clean_accuracy"] * 100 == pytest.approx(rate["original_accuracy"], abs=0.01)
    assert s["accuracy_under_attack"] * 100 == pytest.approx(rate["attack_accuracy_perc"], abs=0.01)
    assert s["attack_success_rate"] * 100 == pytest.approx(rate["attack_success_rate"], abs=0.01)
    assert s["successful"] > 0  # the tiny model is easy to fool: the numbers below are not vacuous
    assert s["words_perturbed"] * 100 == pytest.approx(ta_metrics.WordsPerturbed().calculate(results)[
        "avg_word_perturbed_perc"], abs=0.01)
    assert s["queries"] == pytest.approx(ta_metrics.AttackQueries().calculate(results)["avg_num_queries"], abs=0.01)


def test_candor_attack_writes_the_report_card_and_examples_and_honours_the_time_budget(trained_tiny, tmp_path,
                                                                                        capsys):
    import shutil

    from ui.cli import main

    model = tmp_path / "model"
    shutil.copytree(trained_tiny, model)
    assert main(["attack", str(model), "--recipe", "deepwordbug,pruthi", "-n", "6", "-q"]) == 0
    out = capsys.readouterr().out
    report = json.loads((model / "reports" / "attack_report.json").read_text())
    assert [r["recipe"] for r in report["recipes"]] == ["deepwordbug", "pruthi"]
    assert all(r["attacked"] == 6 and r["stopped"] is None for r in report["recipes"])
    rows = list(csv.DictReader((model / "reports" / "attack_examples.csv").open()))
    assert len(rows) == sum(r["successful"] for r in report["recipes"]) > 0
    assert all(r["original"] != r["perturbed"] and r["true_intent"] != r["predicted_intent"] for r in rows)
    assert (model / "reports" / "attack_report.png").stat().st_size > 5000
    card = read_card(model)
    assert card["robustness"]["recipes"] == report["recipes"]
    table = robustness_table(card["robustness"])
    assert table in (model / "model_card.md").read_text() and table.splitlines()[2] in out
    # a budget too small for anything: each recipe stops before its first message, cleanly, and says so
    assert main(["attack", str(model), "--recipe", "deepwordbug,pruthi", "-n", "6", "-q", "--time-budget",
                 "0.000001"]) == 0
    stopped = read_card(model)["robustness"]["recipes"]
    assert [(r["attacked"], r["stopped"]) for r in stopped] == [(0, "time budget"), (0, "time budget")]


def _spec(tmp_path, dp=False, epochs=2, **robustness):
    tmp_path.mkdir(parents=True, exist_ok=True)
    bot = tiny_bot_dict(epochs=epochs, reply_weight=0.0)
    bot["robustness"] = robustness
    if dp:
        pub = tmp_path / "public.txt"
        pub.write_text("\n".join(["where is my parcel", "cancel the order", "money back please", "talk to someone"] * 30))
        # little noise on few parameters (intent head + final norm): it learns enough in 2 epochs to be attacked
        bot["privacy"] = {"enabled": True, "target_epsilon": 50.0, "logical_batch": 40, "physical_batch": 8,
                          "public_corpus": str(pub), "train_blocks": 0, "epochs": epochs, "head_init": "random"}
        bot["training"]["learning_rate"] = 0.1
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    return load_bot(path)[0]


def test_augmented_views_replace_records_one_for_one(tmp_path):
    from safety.augment import AugmentView, make

    assert set(AUGMENTERS) == {make(n).name for n in AUGMENTERS}
    spec = _spec(tmp_path, augment=["charswap", "deletion"], augment_share=1.0)
    seen = []

    class Spy(Trainer):
        def view(self, index, record, rng):
            text = super().view(index, record, rng)
            seen.append((index, record.text, text))
            return text

    trainer = Spy(spec, tmp_path / "m", progress=False, log=lambda *a: None,
                  views=[AugmentView(spec.robustness.augment, spec.robustness.augment_share)])
    trainer._setup(False)
    trainer._finetune_epoch()
    indices = [i for i, _, _ in seen]
    assert sorted(indices) == list(range(len(trainer.train_records)))  # each record once per epoch, no extra ones
    assert all(trainer.train_records[i].text == orig for i, orig, _ in seen)
    changed = sum(orig != text for _, orig, text in seen)
    assert changed >= 0.9 * len(seen)  # share 1.0: (nearly) every view is augmented
    assert trainer.state.batch == -(-len(seen) // spec.training.batch_size)


class _Counting(DPSGD):
    """Records, for every DP batch, how many records were sampled and how many sequences were built."""

    def batch(self, trainer, idx):
        b, pos, y = super().batch(trainer, idx)
        trainer.sizes.append((len(idx), b["input_ids"].shape[0]))
        return b, pos, y


class _Seeing(Trainer):
    """Records every text the DP batches were built from."""

    def view(self, index, record, rng):
        text = super().view(index, record, rng)
        self.seen.append((index, text))
        return text


def _dp_run(tmp_path, **robustness):
    from ui.verbs.train import views

    spec = _spec(tmp_path, dp=True, epochs=3, **robustness)
    logs = []
    trainer = _Seeing(spec, tmp_path / "m", progress=False, log=logs.append,
                      views=views(spec, progress=False, log=logs.append), privacy=_Counting(spec, log=logs.append))
    trainer.sizes, trainer.seen = [], []
    out = trainer.run()
    return trainer, read_card(out), logs


def test_adversarial_training_under_dp_keeps_one_gradient_per_record_and_the_accountants_epsilon(tmp_path, monkeypatch):
    monkeypatch.setattr("safety.privacy.noisy_count", lambda n, epsilon: n)  # both runs plan with the same count
    adv, card, logs = _dp_run(tmp_path / "adv", adversarial=True, adversarial_clean_epochs=2, adversarial_share=0.5,
                              adversarial_query_budget=60)
    plain, plain_card, _ = _dp_run(tmp_path / "plain")
    fooled = [int(line.split("on ")[1].split(" of")[0]) for line in logs if "fooled the model" in line]
    assert len(fooled) == 1 and fooled[0] > 0, logs  # one adversarial epoch
    examples = adv.views[0].examples
    used = [(i, t) for i, t in adv.seen if examples.get(i) == t]
    assert used and all(adv.train_records[i].text != t for i, t in used)  # its adversarial examples were trained on
    assert all(sampled == seqs for sampled, seqs in adv.sizes)  # one sequence per sampled record, views or not
    assert len(adv.seen) == sum(sampled for sampled, _ in adv.sizes)
    p, q = card["privacy"], plain_card["privacy"]
    assert p["records_noisy"] == q["records_noisy"] == len(adv.train_records)  # adversarial examples: no extra records
    assert (p["noise_multiplier"], p["sample_rate"], p["steps"]) == (q["noise_multiplier"], q["sample_rate"], q["steps"])
    acc = PRVAccountant()
    acc.history = [tuple(h) for h in p["history"]]
    assert p["epsilon"] == pytest.approx(acc.get_epsilon(p["delta"]) + p["epsilon_count"], rel=1e-9) \
        == pytest.approx(q["epsilon"], rel=1e-9)
    assert p["epsilon"] <= 50.5
    view = card["training"]["views"][0]
    assert view["view"] == "adversarial" and "epochs" not in view  # how often attacks worked is not published under DP


def _counted_view():
    from safety.adversarial import AdversarialView

    view = AdversarialView("deepwordbug", 0.5, 0, 60, progress=False, log=lambda *a: None)
    view.calls, real = 0, view._attack

    def counting(trainer):
        view.calls += 1
        return real(trainer)

    view._attack = counting
    return view


def test_a_resumed_adversarial_epoch_trains_on_the_same_examples(tmp_path):
    spec = _spec(tmp_path, epochs=1, adversarial=True, adversarial_clean_epochs=0, adversarial_share=0.5)
    spec.training.checkpoint_every = 1

    class Crash(Trainer):
        def _stepped(self):
            super()._stepped()
            if self.state.stage == "finetune" and self.state.batch == 2:
                raise RuntimeError("killed mid-epoch")

    first = _counted_view()
    with pytest.raises(RuntimeError, match="killed mid-epoch"):
        Crash(spec, tmp_path / "m", progress=False, log=lambda *a: None, views=[first]).run()
    assert first.calls == 1 and first.examples
    again = _counted_view()
    resumed = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None, views=[again])
    resumed.run(resume=True)
    assert again.calls == 0 and again.examples == first.examples  # from the checkpoint, not a new attack
    assert all(resumed.train_records[i].text != text for i, text in again.examples.items())


def test_adversarial_training_needs_an_adversarial_epoch_and_keeps_weights_from_one(tmp_path):
    from bot.spec import BotFileError

    with pytest.raises(BotFileError, match="adversarial training would never start"):
        _spec(tmp_path / "a", epochs=2, adversarial=True, adversarial_clean_epochs=2)
    view = _counted_view()
    view.clean_epochs = 2
    assert [view.may_keep(e) for e in range(4)] == [False, False, True, True]


def test_serving_and_chat_do_not_import_textattack():
    code = ("import sys, ui.cli, ui.web, ui.service, ui.verbs.serve, ui.verbs.chat, ui.verbs.train, ui.verbs.attack\n"
            "print(sorted(m for m in ('textattack', 'nltk', 'flair') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-1000:]
