import torch

from bot.classify import decide
from bot.spec import Settings

INTENTS = ["a", "b", "c"]


def test_confident_prediction_is_kept():
    d = decide(torch.tensor([0.8, 0.15, 0.05]), INTENTS, Settings())
    assert (d.intent, d.fallback, d.fallback_reason) == ("a", False, None)
    assert d.ranking[0] == ("a", 0.800000011920929) and [r[0] for r in d.ranking] == ["a", "b", "c"]


def test_low_confidence_falls_back():
    d = decide(torch.tensor([0.2, 0.29, 0.51]), INTENTS, Settings(confidence_threshold=0.6))
    assert d.intent == "c" and d.fallback and d.fallback_reason == "low_confidence" and d.confidence_threshold == 0.6


def test_ambiguous_top_two_falls_back():
    d = decide(torch.tensor([0.46, 0.40, 0.14]), INTENTS, Settings())
    assert d.fallback and d.fallback_reason == "ambiguous" and d.ambiguity_threshold == 0.1
    assert not decide(torch.tensor([0.46, 0.35, 0.19]), INTENTS, Settings()).fallback


def test_thresholds_are_settings():
    probs = torch.tensor([0.46, 0.40, 0.14])
    assert not decide(probs, INTENTS, Settings(ambiguity_threshold=0.05)).fallback
    assert decide(probs, INTENTS, Settings(confidence_threshold=0.5, ambiguity_threshold=0.0)).fallback_reason == "low_confidence"
