"""`candor pretrain-public`: a public base built from public labelled text, then used as `model.base`."""
from __future__ import annotations

import csv
import gzip
import io
import json

import pytest
import yaml

from bot.pretrain import base_provenance, labelled, parse_source, pretrain_public, public_spec
from tests.conftest import TINY_MODEL, tiny_bot_dict

SGD_ROWS = [  # split, dialogue_id, turn, service, intent, text
    ("train", "1_001", 0, "Music_3", "PlayMedia", "play some jazz in the kitchen"),
    ("train", "1_001", 2, "Music_3", "PlayMedia", "Play some jazz in the kitchen "),  # same text, normalised
    ("dev", "1_002", 0, "Music_3", "LookupMusic", "play some jazz in the kitchen"),  # outvoted label
    ("dev", "1_003", 0, "Flights_1", "SearchOnewayFlight", "a flight to denver on friday"),
    ("test", "1_004", 0, "Weather_1", "GetWeather", "will it rain in paris tomorrow"),  # never read
]


def _sgd_file(path, rows=SGD_ROWS):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["split", "dialogue_id", "turn", "service", "intent", "text"])
    w.writerows(rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode()))
    return path


def test_public_spec_prefixes_labels_votes_and_skips_the_sgd_test_split(tmp_path):
    sgd = parse_source(f"sgd:{_sgd_file(tmp_path / 'sgd.csv.gz')}")
    (tmp_path / "faq.csv").write_text("text,intent\nwhat are your hours,hours\nwhen do you open,hours\n")
    faq = parse_source(f"csv:{tmp_path / 'faq.csv'}")
    assert ("will it rain in paris tomorrow", "sgd:GetWeather") not in labelled(sgd)
    spec = public_spec([sgd, faq])
    assert sorted(spec.intents) == ["faq:hours", "sgd:PlayMedia", "sgd:SearchOnewayFlight"]
    assert [e.text for e in spec.intents["sgd:PlayMedia"].examples] == ["play some jazz in the kitchen"]
    assert len(public_spec([sgd, faq], max_per_label=1).intents["faq:hours"].examples) == 1


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="KIND:PATH"):
        parse_source("wikipedia:/tmp/x")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        parse_source(f"banking77:{tmp_path}")
    (tmp_path / "bad.csv").write_text("utterance,label\nhi,greet\n")
    with pytest.raises(ValueError, match="bad.csv: line 1: a csv source needs columns text, intent; missing text, intent"):
        labelled(parse_source(f"csv:{tmp_path / 'bad.csv'}"))
    (tmp_path / "held.csv").write_text("text,intent,split\nwhat are your hours,hours,test\n")
    with pytest.raises(ValueError, match="held.csv: no labelled rows outside a test split"):
        labelled(parse_source(f"csv:{tmp_path / 'held.csv'}"))


def test_a_bot_fine_tunes_from_a_public_base(tmp_path):
    rows = [("train", f"d{i}", 0, s, intent, f"{verb} {obj} {when}")
            for i, (s, intent, verb) in enumerate([("Music_3", "PlayMedia", "play"), ("Flights_1", "SearchOnewayFlight", "fly"),
                                                   ("Homes_1", "FindHomeByArea", "rent")] * 4)
            for obj, when in [("the jazz album", "today"), ("to denver", "on friday"), ("a flat", "next week")]]
    sgd = parse_source(f"sgd:{_sgd_file(tmp_path / 'sgd.csv.gz', rows)}")
    base = pretrain_public([sgd], tmp_path / "base", model={**TINY_MODEL, "vocab_size": 300},
                           training={"epochs": 1, "pretrain_epochs": 1, "batch_size": 8}, progress=False,
                           log=lambda *a: None)
    card = json.loads((base / "candor.json").read_text())
    assert card["public_base"]["labels"] == 3 and card["public_base"]["sources"][0].startswith("sgd:")
    assert "A public base (`candor pretrain-public`) from sgd:" in (base / "model_card.md").read_text()

    bot = tiny_bot_dict(epochs=2)
    bot["model"]["base"] = str(base)
    (tmp_path / "bot.yaml").write_text(yaml.safe_dump(bot, sort_keys=False))
    from bot.spec import load_bot
    from bot.train import train
    from bot.model import load
    out = train(load_bot(tmp_path / "bot.yaml")[0], tmp_path / "model", progress=False, log=lambda *a: None)
    model, tok = load(out)[:2]
    assert model.intents == list(bot["intents"])  # a fresh intent head: the bot's own intents
    assert (out / "vocab.json").read_text() == (base / "vocab.json").read_text()  # the base's tokenizer, not refitted
    assert json.loads((out / "candor.json").read_text())["training"]["base"] == str(base)
    said = base_provenance(str(out))  # what a DP card built on this model would name as its public data
    assert said.startswith(f"Candor model {out}, trained on bot 'tiny' from public base {base} (candor pretrain-public: sgd:")
