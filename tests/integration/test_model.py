"""The saved directory is a plain Hugging Face model: parity with transformers' own classes."""
import pytest
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from bot import model as models
from bot.data import Encoder
from bot.spec import ModelSettings
from tests.conftest import TINY_MODEL


def _tiny(tmp_path):
    settings = ModelSettings(**TINY_MODEL)
    tok = models.make_tokenizer(settings, ["cancel my order", "where is my parcel", "refund please"] * 20)
    torch.manual_seed(0)
    model = models.build(settings, tok, ["a", "b", "c"]).eval()
    model.save(tmp_path, tok)
    return model, tok


def test_saved_directory_loads_with_plain_transformers(tmp_path):
    model, tok = _tiny(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    enc = Encoder(AutoTokenizer.from_pretrained(tmp_path), 64)
    batch = enc.pad_batch([enc.classify("cancel my order"), enc.classify("refund please now, thanks")])
    ids, mask = batch["input_ids"], batch["attention_mask"]

    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert clf.config.id2label == {0: "a", 1: "b", 2: "c"}
    with torch.no_grad():
        ours = model.score(model.intent_features(ids, mask))  # GPT-2's part: plain transformers has no n-grams
        theirs = clf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs)

    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids, attention_mask=mask).logits,
                                   model.lm(input_ids=ids, attention_mask=mask).logits)


def test_load_round_trip(tmp_path):
    model, _ = _tiny(tmp_path)
    loaded, tok = models.load(tmp_path)
    assert loaded.intents == ["a", "b", "c"]
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize("damage", ["truncated", "flipped header", "pickle", "empty"])
def test_damaged_or_pickled_model_files_are_refused_with_a_clear_message(trained_tiny, tmp_path, damage):
    import pickle
    import shutil
    import subprocess
    import sys

    from bot.io import ModelFileError
    from bot.model import load

    model = tmp_path / "model"
    shutil.copytree(trained_tiny, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flipped header":
        weights.write_bytes(b"\xff" * 16 + data[16:])
    elif damage == "pickle":
        weights.write_bytes(pickle.dumps({"score.weight": [1, 2, 3]}))
    else:
        weights.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a complete safetensors file"):
        load(model)
    res = subprocess.run([sys.executable, "-m", "ui.cli", "eval", str(model)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 1 and "not a complete safetensors file" in res.stderr and "Traceback" not in res.stderr
