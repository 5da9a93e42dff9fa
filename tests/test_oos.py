"""Out-of-scope detection and calibration: the temperature, the OOS measures, outlier exposure, the
bot file's `out_of_scope:` list and the importers that keep such rows."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from bot.classify import fit_temperature
from bot.data import outlier_texts
from bot.dialogue import Bot
from bot.evaluate import expected_calibration_error, oos_measures, threshold_for_recall
from bot.importers import from_csv, from_rasa
from bot.model import read_card
from bot.spec import OUT_OF_SCOPE, BotFileError, dump_bot, load_bot, parse_bot
from tests.conftest import TINY_OUT_OF_SCOPE, tiny_bot_dict
from ui.cli import main


def _noisy_classifier(n=4000, k=5, seed=0):
    """Logits and labels drawn from softmax(logits): a classifier calibrated at temperature 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2
    y = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
    return logits, y


def test_an_overconfident_model_gets_a_temperature_above_one():
    logits, y = _noisy_classifier()
    t_fit = fit_temperature(logits, y)
    hot = fit_temperature(logits * 10, y)  # the same classifier, made overconfident
    assert t_fit == pytest.approx(1.0, abs=0.1) and hot == pytest.approx(10 * t_fit, rel=0.01)
    assert fit_temperature(logits / 10, y) < 1  # underconfident: sharpened
    nll = lambda t: float(torch.nn.functional.cross_entropy(logits * 10 / t, y))  # noqa: E731
    assert nll(hot) < min(nll(1.0), nll(hot * 1.2), nll(hot / 1.2))  # a minimum of the NLL


def test_calibration_lowers_the_expected_calibration_error():
    logits, y = _noisy_classifier(seed=1)
    hot = logits * 10
    probs = lambda t: (hot / t).softmax(-1)  # noqa: E731
    ece = lambda p: expected_calibration_error(p.max(1).values.numpy(), (p.argmax(1) == y).numpy())  # noqa: E731
    assert ece(probs(fit_temperature(hot, y))) < 0.03 < 0.2 < ece(probs(1.0))


def test_oos_measures_on_a_small_fixed_example():
    in_top, oos_top = [0.9, 0.8, 0.6, 0.2], [0.1, 0.25, 0.5, 0.95]
    m = oos_measures(in_top, oos_top, [t < 0.3 for t in oos_top])
    # AUROC = P(an OOS question is less confident than an in-scope one) = (4 + 3 + 3 + 0) / 16
    assert m == {"oos_examples": 4, "oos_recall": 0.5, "auroc": pytest.approx(10 / 16)}
    assert threshold_for_recall(oos_top, [False] * 4, 0.75) == 0.5001  # 0.1, 0.25 and 0.5 fall below it
    assert threshold_for_recall(oos_top, [False] * 4, 0.5) == 0.2501
    assert threshold_for_recall(oos_top, [False, False, False, True], 1.0) == 0.5001  # 0.95 falls back as ambiguous
    assert threshold_for_recall(oos_top, [True] * 4, 1.0) == 0.0
    assert threshold_for_recall([], [], 0.8) is None
    assert oos_measures(in_top, [], [])["oos_recall"] is None
    # ECE: two bins, |0.5 - 0.9| and |1.0 - 0.6|, each half of the examples
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == pytest.approx(0.4)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0


def test_out_of_scope_examples_are_parsed_checked_and_round_trip(tmp_path):
    bot = tiny_bot_dict()
    bot["out_of_scope"] = ["what is the weather on venus", "play some jazz"]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    spec, _ = load_bot(path)
    assert [e.text for e in spec.out_of_scope] == bot["out_of_scope"]
    assert {e.intent for e in spec.out_of_scope} == {OUT_OF_SCOPE}
    dump_bot(spec, tmp_path / "again.yaml")
    assert [e.text for e in load_bot(tmp_path / "again.yaml")[0].out_of_scope] == bot["out_of_scope"]

    clash = dict(bot, out_of_scope=[bot["intents"]["cancel_order"]["examples"][0]])
    problems = []
    parse_bot(yaml.safe_dump(clash), "c.yaml", problems)
    assert any("is also an example of intent 'cancel_order'" in p.message and p.severity == "error" for p in problems)
    leak = dict(bot, test=[{"text": "Play some jazz", "intent": "out_of_scope"}])
    problems = []
    parse_bot(yaml.safe_dump(leak), "l.yaml", problems)
    assert any("leakage" in p.message and p.severity == "error" for p in problems)
    problems = []
    parse_bot(yaml.safe_dump(dict(bot, out_of_scope="play jazz")), "s.yaml", problems)
    assert any("must be a list" in p.message for p in problems)


def test_outlier_texts_drop_what_looks_like_the_bots_own_examples(tmp_path):
    bot = tiny_bot_dict()
    example = bot["intents"]["cancel_order"]["examples"][0]
    public = tmp_path / "public.txt"
    public.write_text("\n".join([example, example.upper() + " thanks", "book a table for two at eight",
                                 "play the new album by the cure", "what's the weather in paris"]))
    bot["training"].update(outlier_corpus=str(public))
    bot["out_of_scope"] = ["tell me a joke"]
    spec = parse_bot(yaml.safe_dump(bot))
    texts, dropped = outlier_texts(spec)
    assert dropped == 2 and example not in texts
    assert texts[:3] == ["book a table for two at eight", "play the new album by the cure", "what's the weather in paris"]
    assert texts[3:] == ["tell me a joke"]  # the bot file's own, after the public ones
    spec.training.outlier_weight = 0.0
    assert outlier_texts(spec) == ([], 0)
    spec.training.outlier_weight, spec.training.outlier_corpus = 0.5, "none"
    assert outlier_texts(spec) == (["tell me a joke"], 0)


def test_training_records_outlier_exposure_and_calibration(trained_tiny):
    t = read_card(trained_tiny)["training"]
    oe = t["outlier_exposure"]  # the tiny bot's own out_of_scope examples (tests/conftest.py)
    assert oe["enabled"] and oe["corpus"] == "none" and oe["texts"] == len(TINY_OUT_OF_SCOPE)
    assert oe["bot_file_out_of_scope_examples"] == len(TINY_OUT_OF_SCOPE)
    temperature = t["calibration"]["temperature"]
    # fitted, or (a tiny validation split all right) left at 1 with the reason: never sharpened toward 0
    assert (t["calibration"]["fitted_on"] == "validation split" and temperature != 1.0) or (
        temperature == 1.0 and "classified right" in t["calibration"]["why"])
    bot = Bot(trained_tiny)
    assert bot.model.temperature == pytest.approx(temperature, abs=1e-4)  # saved in config.json, loaded back
    assert json.loads((trained_tiny / "config.json").read_text())["intent_temperature"] == pytest.approx(temperature, abs=1e-4)


def test_outlier_exposure_lowers_the_confidence_on_unrelated_text(tmp_path):
    """Same tiny bot, same seed, with and without outlier exposure: public travel and music questions get a
    lower confidence with it, the bot's own test questions keep theirs."""
    from bot.classify import predict_proba
    from bot.train import train

    public = ["book a table for two tonight", "play some jazz from the seventies", "find me a hotel in boston",
              "what time does the movie start", "is it going to rain tomorrow", "rent a car at the airport"]
    unseen = ["reserve a table at an italian place", "play something by miles davis", "a flight to denver please",
              "will it be sunny on sunday"]
    conf = {}
    for weight in (0.0, 1.0):
        bot = tiny_bot_dict(epochs=12, reply_weight=0.0, outlier_weight=weight)
        (tmp_path / "pub.txt").write_text("\n".join(public))
        bot["training"]["outlier_corpus"] = str(tmp_path / "pub.txt")
        spec = parse_bot(yaml.safe_dump(bot), str(tmp_path / "b.yaml"))
        model_dir = train(spec, tmp_path / f"m{weight}", progress=False, log=lambda *a: None)
        b = Bot(model_dir)
        conf[weight] = predict_proba(b.model, b.enc, unseen).max(1).values
        inside = predict_proba(b.model, b.enc, [e.text for e in spec.test if e.intent != OUT_OF_SCOPE])
        assert float(inside.max(1).values.mean()) > 0.5, weight
    assert float(conf[1.0].mean()) < float(conf[0.0].mean()) - 0.1, conf


def test_csv_import_keeps_out_of_scope_rows_and_the_test_split(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("text,intent,split\nhi,greet,\nhello,greet,train\nbye,leave,\nsee you,leave,\n"
                   "what is the weather,oos,\nplay some jazz,out_of_scope,train\nhey there,greet,test\n"
                   "book a flight,OOS,test\n")
    spec = from_csv(src)
    assert [e.text for e in spec.out_of_scope] == ["what is the weather", "play some jazz"]
    assert sorted(spec.intents) == ["greet", "leave"]  # no intent called "oos"
    assert [(e.text, e.intent) for e in spec.test] == [("hey there", "greet"), ("book a flight", OUT_OF_SCOPE)]
    dump_bot(spec, tmp_path / "bot.yaml")
    again, problems = load_bot(tmp_path / "bot.yaml")
    assert len(again.out_of_scope) == 2 and len(again.test) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("text,intent,split\nhi,greet,dev\n")
    with pytest.raises(BotFileError, match=r"bad.csv:2: error: split must be"):
        from_csv(bad)


def test_rasa_import_keeps_out_of_scope_examples(tmp_path):
    nlu = tmp_path / "nlu.yml"
    nlu.write_text("nlu:\n- intent: greet\n  examples: |\n    - hi\n    - hello\n- intent: out_of_scope\n"
                   "  examples: |\n    - what's the meaning of life\n    - order a pizza\n- intent: bye\n"
                   "  examples: |\n    - bye\n    - ciao\n")
    spec = from_rasa(nlu)
    assert sorted(spec.intents) == ["bye", "greet"]
    assert [e.text for e in spec.out_of_scope] == ["what's the meaning of life", "order a pizza"]


def test_eval_suggests_a_threshold_and_applies_it_only_when_asked(trained_tiny, tmp_path, capsys):
    from bot import card as cards

    model = tmp_path / "model"
    shutil.copytree(trained_tiny, model)
    # no ambiguity rule: the confidence threshold alone must catch the out-of-scope questions (a threshold above 0)
    cards.update(model, settings={**read_card(model)["settings"], "ambiguity_threshold": 0.0})
    bot = tiny_bot_dict()
    bot["test"] += [{"text": t, "intent": "out_of_scope"} for t in
                    ("book a table for two", "play some jazz", "what time is the movie", "is it raining in oslo")]
    source = tmp_path / "b.yaml"
    source.write_text(yaml.safe_dump(bot, sort_keys=False))
    reports = model / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "attack_examples.csv").write_text("kept")  # another verb's report: eval must not delete it
    assert main(["eval", str(model), "--bot", str(source), "--target-oos-recall", "1.0"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((reports / "intent_report.json").read_text())["summary"]
    sug = summary["suggested_threshold"]
    assert summary["oos_examples"] == 5 and 0 <= summary["auroc"] <= 1 and 0 <= summary["ece"] <= 1
    assert sug["oos_recall"] == 1.0 and not sug["applied"] and "rough guide" in sug["note"]
    assert sug["confidence_threshold"] > 0 and f"{sug['confidence_threshold']:g}" in out and "apply it with --apply-threshold" in out
    assert (reports / "attack_examples.csv").read_text() == "kept"
    for name in ("intent_reliability.png", "oos_histogram.png"):
        assert (reports / name).read_bytes()[:4] == b"\x89PNG"
    assert Bot(model).settings.confidence_threshold == 0.3  # only suggested

    assert main(["eval", str(model), "--bot", str(source), "--target-oos-recall", "1.0", "--apply-threshold"]) == 0
    assert "APPLIED" in capsys.readouterr().out
    served = Bot(model)
    assert served.settings.confidence_threshold == sug["confidence_threshold"]
    probs = [served.classify(e["text"]) for e in bot["test"] if e["intent"] == "out_of_scope"]
    assert all(d.fallback for d in probs)  # recall 1.0 at the applied threshold, as the report said
    metrics = read_card(model)["metrics"]  # measured again at the applied threshold
    assert metrics["confidence_threshold"] == sug["confidence_threshold"] and metrics["oos_recall"] == 1.0
    assert np.isclose(metrics["suggested_threshold"]["confidence_threshold"], sug["confidence_threshold"])


def test_eval_says_when_the_ambiguity_rule_alone_meets_the_target_and_applies_nothing(trained_tiny, tmp_path, capsys):
    """A suggested threshold of 0 (the ambiguity rule alone reaches the target recall) is said in words, and
    --apply-threshold leaves the served threshold as it is rather than turning the confidence rule off."""
    from bot import card as cards

    model = tmp_path / "model"
    shutil.copytree(trained_tiny, model)
    # an ambiguity threshold of 1: every decision is ambiguous, so no confidence threshold is needed for any recall
    cards.update(model, settings={**read_card(model)["settings"], "ambiguity_threshold": 1.0})
    bot = tiny_bot_dict()
    bot["test"] += [{"text": "book a table for two", "intent": "out_of_scope"}]
    source = tmp_path / "b.yaml"
    source.write_text(yaml.safe_dump(bot, sort_keys=False))
    assert main(["eval", str(model), "--bot", str(source), "--target-oos-recall", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "none needed (the ambiguity rule alone gives OOS recall 1.000)" in out
    assert main(["eval", str(model), "--bot", str(source), "--target-oos-recall", "1.0", "--apply-threshold"]) == 0
    assert "nothing applied: the served threshold stays 0.3" in capsys.readouterr().out
    assert Bot(model).settings.confidence_threshold == 0.3
    summary = read_card(model)["metrics"]  # the evaluation itself is still written
    assert summary["suggested_threshold"]["confidence_threshold"] == 0.0 and not summary["suggested_threshold"]["applied"]
