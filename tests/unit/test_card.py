"""bot/card.py: the model card's typed sections, each writing its lines once, rendered alike by the card file,
`candor privacy report` and the web app's Model tab. Cards are written by hand here (the keys the trainers, the
DP ledger, `candor eval`, `candor attack` and the audits write): no model is trained."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import yaml

from bot import card as cards
from bot.card import CARD_MD, Card, Privacy, at_least, privacy_report
from bot.model import CARD_JSON, read_card
from bot.spec import load_bot
from tests.conftest import tiny_bot_dict

# distinctive numbers that a DP card must never show (exact counts of private data)
TRAIN, VAL, REPLY, OUTLIERS, DROPPED, FOOLED, ATTACKED, MEMBERS = 1373, 157, 1409, 3121, 271, 83, 347, 613

TRAINING = {
    "base": "scratch", "device": "cpu", "seed": 13, "processes": 1, "steps": 420, "finetune_start_step": 100,
    "best_epoch": 3, "epochs_run": 4, "history": [], "resumed_from_steps": [200], "seconds": 61.5,
    "train_examples": TRAIN, "validation_examples": VAL, "reply_examples": REPLY,
    "views": [{"view": "augment", "share": 0.2, "augmenters": ["charswap", "typo"]},
              {"view": "adversarial", "clean_epochs": 2, "share": 0.25, "recipe": "deepwordbug",
               "epochs": [{"epoch": 3, "fooled": FOOLED, "attacked": ATTACKED}]}],
    "outlier_exposure": {"enabled": True, "weight": 0.5, "per_batch": 8, "corpus": "bundled SGD turns",
                         "texts": OUTLIERS, "dropped_as_near_examples": DROPPED, "bot_file_out_of_scope_examples": 5},
    "regularisation": {"label_smoothing": 0.1}, "precision": "bf16",
    "conversation": {"earlier_turns_read": 1, "follow_up_share": 0.3, "switch_share": 0.1,
                     "follow_ups": "templates in bot/followups.py"},
    "calibration": {"temperature": 1.3, "fitted_on": "validation split"},
    "distance_rule": {"enabled": True, "threshold": 0.41, "k": 20, "quantile": 0.99, "fitted_on": "validation split"},
    "val_accuracy": 0.9712,
}
LEDGER = {  # the privacy dict the DP trainer writes (safety/privacy.py)
    "dp": True, "epsilon": 7.994, "delta": 1e-5, "target_epsilon": 8.0, "epsilon_sgd": 7.944, "epsilon_count": 0.05,
    "accountant": "Opacus PRV (Poisson-subsampled Gaussian; the noisy count's ε added by basic composition)",
    "noise_multiplier": 0.91234, "sample_rate": 0.0123, "max_grad_norm": 1.0, "steps": 330, "epochs": 4,
    "logical_batch": 16, "physical_batch": 16, "processes": 1, "records_noisy": 1370,
    "unit": "one distinct training utterance with its intent and its reply target",
    "noise": "Gaussian noise and Poisson sampling from generators seeded from the OS CSPRNG; (Mironov 2012)",
    "published_counts": "no exact count of the private data is published",
    "clipping": "per record, flat, ghost clipping", "lm_head": "untied from the input embeddings",
    "trained": "all parameters", "covers": "the training utterances of bot 'tiny' (intent head and reply model)",
    "public_data": "tokenizer and LM pre-training: public.txt (public)",
    "not_covered": "validation utterances and test utterances", "history": [[0.91234, 0.0123, 330]],
}
METRICS = {
    "test_examples": 60, "accuracy": 0.95, "macro_f1": 0.94, "fallback_rate": 0.05, "accuracy_with_fallback": 0.91,
    "ece": 0.031, "oos_examples": 10, "oos_recall": 0.8, "auroc": 0.93, "confidence_threshold": 0.5, "temperature": 1.3,
    "distance_threshold": 0.41, "unfamiliar_rate": 0.012, "distance_auroc": 0.88,
    "suggested_threshold": {"target_oos_recall": 0.9, "confidence_threshold": 0.62, "oos_recall": 0.9,
                            "accuracy_with_fallback": 0.88},
    "replies": {"examples": 12, "template": {"rouge_l": 0.41, "repetition": 0.01}},
}
ROBUSTNESS = {
    "model_version": "tiny@0123456789ab", "created": "2026-12-01T10:00:00+00:00", "test_source": "the bot file",
    "recipes": [{"recipe": "deepwordbug", "attacked": 40, "clean_accuracy": 0.95, "accuracy_under_attack": 0.3,
                 "attack_success_rate": 0.68, "words_perturbed": 0.2, "queries": 31.0,
                 "wrong_without_fallback": 0.4}],
    "natural_noise": {"examples": 40, "description": "one typo per word", "clean_accuracy": 0.95,
                      "noisy_accuracy": 0.8},
}
MEMBERSHIP = {"attack": "loss threshold", "auc": 0.512, "tpr_at_1pct_fpr": 0.011, "tpr_at_10pct_fpr": 0.1,
              "created": "2026-12-01T11:00:00", "members": MEMBERS,
              "distance": {"attack": "distance", "auc": 0.55, "tpr_at_1pct_fpr": 0.02, "tpr_at_10pct_fpr": 0.12}}
CANARIES = {"space_bits": 23.25, "bot": "tiny", "created": "2026-12-01",
            "runs": [{"mode": "plain", "epsilon": None, "max_exposure": {"0": 1.4, "16": 22.9}},
                     {"mode": "dp", "epsilon": 7.9981, "max_exposure": {"0": 1.2, "16": 2.1}}]}


def _write(tmp_path: Path, dp: bool, **parts) -> Path:
    """A model directory's card as the writers leave it: `write` at the end of training, then `update`s."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bot_dict(), sort_keys=False))
    spec, _ = load_bot(path)
    out = tmp_path / ("dp" if dp else "plain")
    out.mkdir()
    cards.write(out, spec, training=TRAINING, counts=not dp)
    cards.update(out, **({"privacy": LEDGER} if dp else {}), **parts)
    return out


def _model_tab(model_dir: Path) -> dict[str, str]:
    """The web app's Model tab for a model directory: each Markdown block's text by its elem_id."""
    from ui.web import _model_tab

    service = SimpleNamespace(card=read_card(model_dir), model_dir=model_dir)
    with gr.Blocks() as blocks:
        _model_tab(service)
    return {b.elem_id or f"#{i}": b.value for i, b in blocks.blocks.items() if isinstance(b, gr.Markdown)}


def test_each_section_renders_its_lines_once(tmp_path):
    model_dir = _write(tmp_path, dp=False, metrics=METRICS, robustness=ROBUSTNESS,
                       audits={"membership": MEMBERSHIP, "canaries": CANARIES},
                       public_base={"sources": ["sgd: 12000 turns"], "texts": 9000, "labels": 77})
    md = (model_dir / CARD_MD).read_text(encoding="utf-8")
    card = Card.of(json.loads((model_dir / CARD_JSON).read_text()))
    assert [s.key for s in card.sections()] == ["model", "training", "privacy", "audits", "evaluation", "robustness",
                                                "limitations"]
    tab = "\n".join(_model_tab(model_dir).values())
    for section in card.sections():
        assert section.lines() or section.key == "robustness", section.key  # every part of this card is shown
        assert md.count(f"## {section.title}\n") == 1 and tab.count(f"## {section.title}\n") == 1, section.title
        assert md.count(section.markdown()) == 1 and tab.count(section.markdown()) == 1, section.title
        for line in section.lines():
            assert md.count(line) == 1 and tab.count(line) == 1, line
    assert md.count(cards.robustness_table(ROBUSTNESS)) == 1 and tab.count(cards.robustness_table(ROBUSTNESS)) == 1
    assert md == cards.render(json.loads((model_dir / CARD_JSON).read_text()))  # the file is the render
    assert f"{TRAIN} training / {VAL} validation utterances" in md and f"{FOOLED} of {ATTACKED} fooled" in md
    assert f"{MEMBERS} training vs {MEMBERS} held-out" in md
    assert "## Robustness" not in cards.render(json.loads((model_dir / CARD_JSON).read_text()), robustness=False)


def test_the_same_privacy_wording_in_the_card_file_the_report_and_the_model_tab(tmp_path):
    from safety.privacy import report

    for dp in (True, False):
        model_dir = _write(tmp_path, dp=dp, audits={"membership": {k: v for k, v in MEMBERSHIP.items()
                                                                   if k != "members" or not dp}})
        card = Card.of(json.loads((model_dir / CARD_JSON).read_text()))
        privacy = card.privacy.markdown() + "\n\n" + card.audits.markdown()
        md, text, tab = (model_dir / CARD_MD).read_text(encoding="utf-8"), report(model_dir), _model_tab(model_dir)
        assert text == privacy_report(model_dir)  # safety.privacy.report is the card's wording, not its own
        assert privacy in md and privacy in text and privacy in tab["model-privacy"]
        shown = "\n".join(tab.values())
        assert shown.count(card.privacy.headline()) == 1  # the guarantee is shown once in the Model tab
        for line in card.privacy.lines() + card.audits.lines():
            assert md.count(line) == text.count(line) == shown.count(line) == 1, line
        assert "## Privacy" not in tab["model-card"] and "Robustness" not in tab["model-card"]
        if dp:
            assert "(ε = 8.00, δ = 1e-05) for each training record" in text  # 7.994, rounded up
            assert "e^8.00 ≈ 2981.0" in text and "(DP-SGD, composed by the accountant)" in text
            assert "over 4 epochs (per record, flat, ghost clipping; LM head untied" in text
            assert "Mironov" in md and "group-wise" in md
        else:
            assert "WITHOUT differential privacy" in text and "Membership inference" in tab["model-privacy"]


def test_web_header_states_the_guarantee_in_the_cards_words(tmp_path):
    """The page header's one sentence is the Privacy section's headline, not a wording of its own."""
    model_dir = _write(tmp_path, dp=True)
    headline = Privacy.of(json.loads((model_dir / CARD_JSON).read_text())).headline()
    assert headline.startswith("Trained with differential privacy: (ε = 8.00, δ = 1e-05)")
    assert headline in (model_dir / CARD_MD).read_text(encoding="utf-8")
    source = (Path(__file__).resolve().parents[2] / "ui" / "web.py").read_text(encoding="utf-8")
    assert "privacy.headline()" in source and "ε = {" not in source


def test_a_dp_card_shows_no_exact_counts(tmp_path):
    """Even where a writer left an exact count in a DP card (older models did), no section writes it."""
    model_dir = _write(tmp_path, dp=True, training={**TRAINING, "views": TRAINING["views"]},
                       audits={"membership": MEMBERSHIP}, metrics=METRICS)
    card = json.loads((model_dir / CARD_JSON).read_text())
    assert all("examples" not in i for i in card["intents"].values())  # write(counts=False)
    assert card["training"]["train_examples"] == TRAIN  # the hazard is there...
    shown = [(model_dir / CARD_MD).read_text(encoding="utf-8"), privacy_report(model_dir),
             *_model_tab(model_dir).values()]
    for text in shown:  # ...and no rendering shows it
        for n in (TRAIN, VAL, REPLY, OUTLIERS, DROPPED, FOOLED, ATTACKED, MEMBERS):
            assert str(n) not in text, n
    md = shown[0]
    assert "Record counts not published" in md and "about 1370 training utterances" in md  # the noisy count is
    assert "Adversarial training: after 2 clean epochs" in md and "fooled" not in md
    assert "Outlier exposure: 8 texts" in md and "training vs held-out utterances" in md


def test_an_old_card_without_newer_keys_still_renders(tmp_path):
    """A card of an early model: no conversation, calibration, distance rule, precision, views, metrics extras, and
    a DP ledger from before the noise and counts were hardened (no noisy count, no `epochs`, no clipping note)."""
    old = {
        "candor_card_version": 1,
        "bot": {"name": "old", "description": "", "source_file": "old.yaml"},
        "intents": {"greet": {"examples": 30, "responses": ["hi"]}, "bye": {"examples": 30, "responses": ["bye"]}},
        "fallback": "Sorry?", "placeholders": {},
        "settings": {"response_mode": "template", "confidence_threshold": 0.5, "ambiguity_threshold": 0.1},
        "model": {"base": "gpt2"},
        "training": {"steps": 10, "device": "cpu", "best_epoch": 1, "epochs_run": 1, "seconds": 3.0, "seed": 1,
                     "train_examples": 48, "validation_examples": 12, "reply_examples": 48},
        "privacy": {k: LEDGER[k] for k in ("dp", "epsilon", "delta", "accountant", "noise_multiplier", "sample_rate",
                                           "max_grad_norm", "steps", "unit", "covers", "public_data", "not_covered")},
        "metrics": {"test_examples": 20, "accuracy": 0.9, "macro_f1": 0.89, "fallback_rate": 0.1},
    }
    model_dir = tmp_path / "old"
    model_dir.mkdir()
    (model_dir / CARD_JSON).write_text(json.dumps(old))
    md = cards.render(old)
    assert "# old — Candor dialogue model" in md and "Size: as the base model" in md and "Intents: 2 (greet, bye)" in md
    assert "10 steps on cpu, best epoch 1 of 1" in md and "Accuracy 0.900, macro-F1 0.890" in md
    assert "Trained before Candor hardened its DP noise and counts" in md and "DP-SGD: noise multiplier 0.912" in md
    assert "No attack report yet" in md and "## Privacy audits" not in md
    assert Card.of(old).privacy.markdown() in privacy_report(model_dir) and "Trained before" in privacy_report(model_dir)
    tab = _model_tab(model_dir)
    assert "Trained before Candor hardened" in tab["model-privacy"] and "Accuracy 0.900" in tab["model-eval"]
    plain = {k: v for k, v in old.items() if k not in ("privacy", "metrics")}
    md = cards.render(plain)
    assert "48 training / 12 validation utterances" in md and "WITHOUT differential privacy" in md
    assert "## Evaluation" not in md


def test_no_card_is_an_error_for_the_report_and_a_note_in_the_model_tab(tmp_path):
    with pytest.raises(FileNotFoundError, match="no candor.json"):
        privacy_report(tmp_path)
    assert _model_tab(tmp_path) == {"model-card": "No model card found."}


def test_at_least_never_states_less_than_the_value():
    assert at_least(7.994) == "8.00" and at_least(8.0) == "8.00" and at_least(7.9901) == "8.00"
    assert at_least(1e-5, 2, significant=True) == "1e-05" and at_least(1.04e-5, 2, significant=True) == "1.1e-05"
    assert at_least(9.96e-6, 2, significant=True) == "1e-05" and at_least(0.0) == "0.00"
    rng = random.Random(0)
    for _ in range(2000):
        x = rng.uniform(0, 20) if rng.random() < 0.5 else 10 ** rng.uniform(-9, -3)
        for digits, sig in ((2, False), (1, False), (2, True)):
            text = at_least(x, digits, significant=sig)
            assert float(text) >= x and float(text) - x <= 10 ** (
                (math.floor(math.log10(x)) - digits + 1) if sig else -digits) * 1.0001, (x, text)
