"""Shared fixtures: a tiny synthetic bot and tiny GPT-2 settings that train in seconds."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_MODEL = {"base": "scratch", "n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 400, "max_length": 64,
              "dropout": 0.0}

_PHRASES = {
    "cancel_order": ["cancel my order", "stop my purchase", "I want to cancel the order", "cancel order please"],
    "track_order": ["where is my package", "track my order", "has my parcel shipped", "order status please"],
    "get_refund": ["I want my money back", "refund please", "how do I get a refund", "return money for purchase"],
    "contact_human_agent": ["talk to a human", "connect me with an agent", "I need a real person", "speak to someone"],
}
_PREFIX = ["", "hi, ", "hello ", "please ", "hey there ", "excuse me, ", "quick question: "]
_SUFFIX = ["", " now", " today", " thanks", " asap", "?", " please", " right away"]


def tiny_bot_dict(n_per_intent: int = 24, **training) -> dict:
    intents, test = {}, []
    for name, phrases in _PHRASES.items():
        combos = [p + core + s for core, p, s in itertools.product(phrases, _PREFIX, _SUFFIX)]
        combos = list(dict.fromkeys(combos))[:: max(1, len(combos) // (n_per_intent + 4))]
        intents[name] = {"examples": combos[:n_per_intent],
                         "responses": [f"Sure, I can help with {name.replace('_', ' ')}.",
                                       f"Let me take care of {name.replace('_', ' ')} for you."]}
        test += [{"text": t, "intent": name} for t in combos[n_per_intent:n_per_intent + 3]]
    test += [{"text": "what is the weather on mars", "intent": "out_of_scope"}]
    return {
        "name": "tiny", "fallback": "Sorry, could you rephrase?",
        "model": dict(TINY_MODEL),
        "training": {"seed": 0, "epochs": 6, "pretrain_epochs": 1, "batch_size": 16, "learning_rate": 3e-3,
                     "val_fraction": 0.15, "patience": 10, "checkpoint_every": 0, "reply_batch_size": 4,
                     **training},
        "intents": intents, "test": test,
    }


@pytest.fixture
def tiny_bot_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bot_dict(), sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> Path:
    """A tiny bot trained once for the whole session."""
    from bot.spec import load_bot
    from bot.train import train

    tmp = tmp_path_factory.mktemp("trained")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bot_dict(epochs=40, reply_batch_size=8, reply_weight=1.0), sort_keys=False),
                    encoding="utf-8")
    spec, _ = load_bot(path)
    return train(spec, tmp / "model", progress=False, log=lambda *a: None)
