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


def test_the_distance_rule_on_a_small_fixed_example(tmp_path):
    """Unit features in 2-D: training examples around two directions; the threshold is the distance that the
    quantile's share of the validation examples stays within; a message far from both directions falls back."""
    from bot import neighbours
    from bot.classify import decide
    from bot.spec import Settings

    angle = lambda *a: torch.tensor([[np.cos(t), np.sin(t)] for t in a], dtype=torch.float32)  # noqa: E731
    train = angle(0.0, 0.1, -0.1, 1.5, 1.6) * 3  # any scale: the rows are normalised
    val = angle(0.05, 0.2, 1.55, 1.2)
    index = neighbours.fit(train, val, quantile=0.75, k=2)
    dist = (1 - torch.cos(torch.tensor([[0.05, 0.05], [0.1, 0.2], [0.05, 0.05], [0.3, 0.4]]))).mean(1)
    assert torch.allclose(index.distance(val), dist, atol=3e-4)  # the index is rounded to float16, as it is saved
    assert index.threshold == float(index.distance(val)[1])  # 3 of the 4 lie within: the 3rd smallest
    assert neighbours.fit(train, val, quantile=1.0, k=2).threshold == pytest.approx(float(dist.max()), abs=3e-4)
    index.save(tmp_path)
    back = neighbours.load(tmp_path)
    assert (back.k, back.quantile) == (2, 0.75) and back.threshold == index.threshold
    assert torch.equal(back.distance(val), index.distance(val))  # served exactly as fitted
    assert neighbours.load(tmp_path / "nowhere") is None
    far = float(index.distance(angle(0.8))[0])  # half-way between the two directions
    assert far > index.threshold
    probs = torch.tensor([0.9, 0.1])
    d = decide(probs, ["a", "b"], Settings(), distance=far, distance_threshold=index.threshold)
    assert d.fallback and d.fallback_reason == "unfamiliar" and d.distance == pytest.approx(far)
    near = decide(probs, ["a", "b"], Settings(), distance=0.0, distance_threshold=index.threshold)
    assert not near.fallback and near.distance_threshold == index.threshold
    assert decide(torch.tensor([0.2, 0.1, 0.7][:2]), ["a", "b"], Settings(), distance=far,
                  distance_threshold=index.threshold).fallback_reason == "low_confidence"  # named first, as before


def test_the_trained_distance_rule_is_fitted_served_and_evaluated(trained_tiny_distance, tmp_path, capsys):
    """The index holds the training examples' features as served (alone and in the conversations a served
    classifier that reads the earlier turn meets) and its threshold is the quantile of the validation split's
    distances, recomputed here through the serving path; unrelated questions lie farther than the bot's own;
    `candor eval`, `candor chat` and the attack wrapper decide with it."""
    import io
    from types import SimpleNamespace

    from bot.classify import predict
    from bot.spec import load_bot
    from bot.train import Trainer
    from ui.verbs.chat import chat

    model = trained_tiny_distance
    card = read_card(model)
    rule = card["training"]["distance_rule"]
    assert rule["enabled"] and rule["k"] == 20 and rule["quantile"] == 0.99 and rule["conversation_views"]
    assert "Distance rule: falls back as unfamiliar beyond" in (model / "model_card.md").read_text()
    bot = Bot(model)
    spec, _ = load_bot(card["bot"]["source_file"])
    trainer = Trainer(spec, tmp_path / "unused", progress=False, log=lambda *a: None)
    views = trainer.conversation_views(trainer.train_records)
    # each single example read after another intent's example; the same every time
    assert len(views) == len(trainer.train_records) > 0
    assert views == Trainer(spec, tmp_path / "other", progress=False, log=lambda *a: None).conversation_views(
        trainer.train_records)
    intent = {r.text: r.intent for r in trainer.train_records}
    assert all(t == r.text and intent[c[0]] != r.intent for (c, t), r in zip(views, trainer.train_records))
    assert len(bot.neighbours.features) == len(trainer.train_records) + len(views)
    val = trainer.val_records
    pairs = [(trainer.contexts([r])[0], r.text) for r in val] + trainer.conversation_views(val)
    assert rule["validation_views"] == len(pairs)
    _, dist = predict(bot.model, bot.enc, [t for _, t in pairs], bot.neighbours, contexts=[c for c, _ in pairs])
    assert float(dist.max()) == pytest.approx(bot.neighbours.threshold, abs=1e-5)  # 0.99 of a small split: all
    inside = predict(bot.model, bot.enc, [e.text for e in spec.test if e.intent != OUT_OF_SCOPE], bot.neighbours)[1]
    away = predict(bot.model, bot.enc, list(TINY_OUT_OF_SCOPE) + ["book a table for two", "play some jazz"],
                   bot.neighbours)[1]
    assert float(away.median()) > float(inside.median())
    d = bot.classify("what's the population of the moon colony")
    assert d.distance is not None and d.distance_threshold == bot.neighbours.threshold
    assert d.fallback == (d.fallback_reason is not None) and (d.fallback_reason == "unfamiliar") == (
        d.confidence >= spec.settings.confidence_threshold and d.distance > d.distance_threshold)

    source = tmp_path / "b.yaml"
    test = tiny_bot_dict()
    test["test"] += [{"text": t, "intent": "out_of_scope"} for t in ("book a table for two", "play some jazz")]
    source.write_text(yaml.safe_dump(test, sort_keys=False))
    assert main(["eval", str(model), "--bot", str(source), "--out", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "reports" / "intent_report.json").read_text())["summary"]
    assert s["distance_threshold"] == pytest.approx(bot.neighbours.threshold, abs=1e-4)
    oos = [bot.classify(t) for t in ("book a table for two", "play some jazz", "what is the weather on mars")]
    assert s["oos_recall"] == pytest.approx(np.mean([d.fallback for d in oos]))  # eval decides as the bot does
    ins = [bot.classify(e["text"]) for e in test["test"] if e["intent"] != OUT_OF_SCOPE]
    assert s["unfamiliar_rate"] == pytest.approx(np.mean([d.distance > d.distance_threshold for d in ins]))
    assert f"distance rule alone: AUROC {s['distance_auroc']:.3f}" in out
    assert f"distance rule: threshold {s['distance_threshold']:g}; {s['unfamiliar_rate']:.3f} of the in-scope" in out

    stdout = io.StringIO()
    assert chat(SimpleNamespace(model=str(model), device="cpu", mode=None), io.StringIO("cancel my order\n/quit\n"),
                stdout) == 0
    assert f"distance {bot.classify('cancel my order').distance:.3f} (unfamiliar beyond " in stdout.getvalue()

    # switched off on the card (no retraining): the index is not used
    from bot import card as cards

    off = tmp_path / "off"
    shutil.copytree(model, off)
    cards.update(off, settings={**card["settings"], "distance_quantile": 0})
    assert Bot(off).neighbours is None and Bot(off).classify("cancel my order").distance is None


def test_a_follow_up_that_keeps_the_intent_is_as_familiar_as_its_request(trained_tiny_distance):
    """Read after an earlier turn, a message decided as that turn's own intent gets that turn's distance (alone, a
    follow-up names nothing the bot was taught); a new request of another intent keeps its own distance."""
    from bot.classify import predict, predict_features

    bot = Bot(trained_tiny_distance)
    m, enc, index = bot.model, bot.enc, bot.neighbours
    pairs = [("cancel my order", "please cancel the order"),  # the same intent: a follow-up that keeps it
             ("where is my package", "I want my money back")]  # another intent: a new request
    probs, dist = predict(m, enc, [t for _, t in pairs], index, contexts=[[e] for e, _ in pairs])
    own = index.distance(predict_features(m, enc, [t for _, t in pairs], contexts=[[e] for e, _ in pairs]))
    e_probs, e_dist = predict(m, enc, [e for e, _ in pairs], index)
    assert probs[0].argmax() == e_probs[0].argmax() and probs[1].argmax() != e_probs[1].argmax()
    assert dist[0] == pytest.approx(float(e_dist[0]), abs=1e-6) and float(own[0]) != pytest.approx(float(e_dist[0]))
    assert dist[1] == pytest.approx(float(own[1]), abs=1e-6)
    assert torch.equal(predict(m, enc, [t for _, t in pairs], index)[1], index.distance(
        predict_features(m, enc, [t for _, t in pairs])))  # alone: its own distance


def test_the_attack_report_decides_with_the_distance_rule(trained_tiny_distance):
    from safety.attacks import ServedIntentModel

    bot = Bot(trained_tiny_distance)
    wrapper = ServedIntentModel(bot.model, bot.enc, neighbours=bot.neighbours)
    from safety.guard import read_message

    for text in ("cancel my order", "what's the population of the moon colony", "zzzz qqqq"):
        d, served = wrapper.decision(text, bot.settings), bot.classify(read_message(text).text)  # read as a turn is
        assert (d.intent, d.fallback, d.fallback_reason) == (served.intent, served.fallback, served.fallback_reason)
        assert d.distance == pytest.approx(served.distance, abs=1e-6)
    assert wrapper.decision("   ", bot.settings) is None  # refused by the served input path: no decision


def test_refitting_the_distance_rule_keeps_the_weights_and_refuses_dp_models(trained_tiny_distance, tmp_path):
    from bot.spec import load_bot
    from bot.train import refit_distance_rule

    model = tmp_path / "m"
    shutil.copytree(trained_tiny_distance, model)
    weights = (model / "model.safetensors").read_bytes()
    spec, _ = load_bot(read_card(model)["bot"]["source_file"])
    spec.settings.distance_quantile = 0.5
    section = refit_distance_rule(spec, model, log=lambda *a: None)
    bot = Bot(model)
    assert section["quantile"] == 0.5 and bot.neighbours.quantile == 0.5 and bot.settings.distance_quantile == 0.5
    assert bot.neighbours.threshold < Bot(trained_tiny_distance).neighbours.threshold  # half of them lie beyond
    assert read_card(model)["training"]["distance_rule"] == section and (model / "model.safetensors").read_bytes() == weights
    spec.settings.distance_quantile = 0
    assert refit_distance_rule(spec, model, log=lambda *a: None)["enabled"] is False
    assert not (model / "neighbours.safetensors").exists()
    card = json.loads((model / "candor.json").read_text())
    (model / "candor.json").write_text(json.dumps({**card, "privacy": {"dp": True}}))  # as a DP model's card says
    with pytest.raises(ValueError, match="trained under DP"):
        refit_distance_rule(spec, model, log=lambda *a: None)


def test_the_distance_rule_can_be_switched_off(tmp_path):
    from bot.train import train

    bad = tiny_bot_dict()
    bad["settings"]["distance_quantile"] = 1.5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(BotFileError, match="settings.distance_quantile must be 0"):
        load_bot(tmp_path / "bad.yaml")
    bot = tiny_bot_dict(epochs=1, reply_weight=0.0)
    bot["settings"]["distance_quantile"] = 0
    model_dir = train(parse_bot(yaml.safe_dump(bot), str(tmp_path / "b.yaml")), tmp_path / "m", progress=False,
                      log=lambda *a: None)
    assert not (model_dir / "neighbours.safetensors").exists()
    assert read_card(model_dir)["training"]["distance_rule"] == {"enabled": False,
                                                               "why": "settings.distance_quantile is 0"}
    assert Bot(model_dir).classify("cancel my order").distance is None


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
    # no ambiguity rule (and no distance rule: tests/conftest.py): the confidence threshold alone must catch the
    # out-of-scope questions (a threshold above 0)
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
    assert "distance_auroc" not in summary and "distance rule" not in out  # a model without the distance rule
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


def test_the_membership_audit_also_attacks_by_the_served_distance(trained_tiny_distance, tmp_path, capsys):
    """The distance a served turn shows is a membership signal (every training example is one of its own nearest
    neighbours): the audit measures it beside the loss attack, and the card says so."""
    model = tmp_path / "m"
    shutil.copytree(trained_tiny_distance, model)
    assert main(["audit", "membership", str(model), "-n", "200"]) == 0
    result = json.loads((model / "reports" / "membership.json").read_text())
    d = result["distance"]
    assert "distance" in d["attack"] and 0.5 < d["auc"] <= 1  # members lie nearer: they are in the index
    assert f"AUC {d['auc']:.3f}" in capsys.readouterr().out
    assert "By the distance rule's distance" in (model / "model_card.md").read_text()
