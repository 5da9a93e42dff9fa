import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from bot.dialogue import Bot, Conversation
from bot.model import read_card
from tests.conftest import dp_bot_file, tiny_bot_dict

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _candor(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ui.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=600, **kw)


def test_training_learns_and_writes_a_complete_model(trained_tiny):
    card = read_card(trained_tiny)
    t = card["training"]
    assert t["val_accuracy"] >= 0.8, t
    assert t["steps"] > 0 and t["epochs_run"] == len(t["history"]) and t["device"] == "cpu"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "model_card.md", "candor.json"):
        assert (trained_tiny / name).is_file(), name
    assert not trained_tiny.with_name("model.checkpoints").exists()  # removed after success
    bot = Bot(trained_tiny)
    r = bot.turn("hello, cancel my order please")
    assert r.intent == "cancel_order" and not r.fallback
    assert r.reply in [s for s in card["intents"]["cancel_order"]["responses"]]
    assert (r.confidence_threshold, r.ambiguity_threshold) == (0.3, 0.1)


def test_generate_mode_writes_replies_in_the_trained_style(trained_tiny):
    from bot.generate import generate_reply

    bot = Bot(trained_tiny, response_mode="generate")
    reply = generate_reply(bot.model, bot.enc, "where is my package", "track_order")
    assert reply.split()[0] in ("Sure,", "Let"), reply  # every trained reply starts so
    assert "<|" not in reply
    conv = Conversation()
    r = bot.turn("where is my package", conv)
    assert r.response_mode == "generate" and r.reply
    bot.turn("thanks, and refund please", conv)
    assert [t.user for t in conv.turns] == ["where is my package", "thanks, and refund please"]


def test_broken_bot_file_writes_nothing(tmp_path):
    bot = tiny_bot_dict()
    bot["test"].append({"text": "x", "intent": "no_such_intent"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    res = _candor("train", path, "-o", tmp_path / "out", "-q")
    assert res.returncode == 1
    assert "test example uses unknown intent 'no_such_intent'" in res.stderr and f"{path}:" in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.checkpoints").exists()


def _kill_at_a_random_step(args: list, out: Path, stage: str, lo: int, hi: int) -> int:
    """Run `candor ARGS`, SIGKILL it once a checkpoint of `stage` at a step drawn from [lo, hi] exists, and
    check that the model directory never appeared (half-written or not). Returns the checkpointed step."""
    import random

    seed = random.SystemRandom().randrange(2**32)
    kill_at = random.Random(seed).randint(lo, hi)
    print(f"killing at step {kill_at} (seed {seed})")
    ckpt = out.with_name(out.name + ".checkpoints")
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", *map(str, args)], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, state = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        assert not out.exists(), "a model directory appeared before training finished"
        try:  # the pointed-to folder may be pruned by a newer checkpoint between the two reads
            state = json.loads((ckpt / json.loads((ckpt / "latest.json").read_text())["dir"] / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        if state and state["stage"] == stage and state["step"] >= kill_at:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    printed = proc.communicate()[0]
    assert state and state["stage"] == stage, f"no {stage} checkpoint at step {kill_at} within 300 s:\n{printed[-3000:]}"
    assert not out.exists(), "killed mid-run: no final model may exist"
    return state["step"]


@pytest.mark.parametrize("weight_average", [0.0, 0.9], ids=["last-weights", "weight-average"])
def test_kill_at_a_random_step_then_resume_finishes_like_an_uninterrupted_run(tmp_path, weight_average):
    path = tmp_path / "tiny.yaml"
    # with an average, no validation split: the last epoch's average is shipped, so a resume that lost it shows
    extra = {"weight_average": weight_average, "val_fraction": 0.0} if weight_average else {}
    path.write_text(yaml.safe_dump(tiny_bot_dict(epochs=25, patience=100, **extra), sort_keys=False))
    ref = _candor("train", path, "-o", tmp_path / "ref", "-q", "--device", "cpu")
    assert ref.returncode == 0, ref.stderr
    steps = read_card(tmp_path / "ref")["training"]["steps"]

    out = tmp_path / "run"
    args = ["train", path, "-o", out, "-q", "--device", "cpu", "--checkpoint-every", "3"]
    killed_at = _kill_at_a_random_step(args, out, "finetune", 10, steps - 10)
    res = _candor(*args, "--resume")
    assert res.returncode == 0, res.stderr
    resumed = [int(s) for s in read_card(out)["training"]["resumed_from_steps"]]
    assert resumed and resumed[0] >= killed_at and f"resumed from step {resumed[0]}" in res.stdout
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs after a kill at step {killed_at}"


def test_kill_dp_training_at_a_random_step_then_resume_spends_at_least_the_planned_epsilon(tmp_path):
    from safety.privacy import epsilon_for

    # count_epsilon 1: the noisy record count stays near the true one, so every run has about 10 steps an epoch
    path = dp_bot_file(tmp_path, {"epochs": 4}, count_epsilon=1.0, logical_batch=8)
    out = tmp_path / "dp"
    args = ["train", path, "-o", out, "-q", "--device", "cpu", "--checkpoint-every", "2"]
    pretrain_steps = 8  # 120 public lines in batches of 16
    killed_at = _kill_at_a_random_step(args, out, "finetune", pretrain_steps + 2, pretrain_steps + 20)
    res = _candor(*args, "--resume")
    assert res.returncode == 0, res.stderr
    card = read_card(out)
    p = card["privacy"]
    planned = 4 * round(1 / p["sample_rate"])  # epochs × steps per epoch, fixed by the noisy count
    assert sum(h[2] for h in p["history"]) == p["steps"] == planned, (killed_at, p["history"])
    uninterrupted = epsilon_for([(p["noise_multiplier"], p["sample_rate"], planned)], p["delta"]) + p["epsilon_count"]
    assert p["epsilon"] >= uninterrupted - 1e-9 and p["epsilon"] <= 8.0 + 1e-9
    assert card["training"]["resumed_from_steps"] and card["training"]["resumed_from_steps"][0] >= killed_at


def test_resume_refuses_a_changed_bot_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bot_dict(epochs=1), sort_keys=False))
    from bot.spec import load_bot
    from bot.train import Trainer

    spec, _ = load_bot(path)
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    trainer._setup(resume=False)
    trainer.checkpoint()
    res = _candor("train", path, "-o", tmp_path / "m", "--resume", "--epochs", "2", "-q")  # --epochs changes it
    assert res.returncode == 1 and "different bot file or settings" in res.stderr


def test_pretrained_base_from_a_local_directory(tmp_path):
    """`model.base` as a local HF directory: GPT-2 without pad or role tokens gets them added."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from bot.spec import load_bot
    from bot.train import train

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["cancel my order", "where is my package", "refund please", "talk to a human"] * 50,
                            vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    base = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(base)
    tok.save_pretrained(base)
    assert tok.pad_token is None

    bot = tiny_bot_dict(epochs=2)
    bot["model"] = {"base": str(base), "max_length": 64}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    spec, _ = load_bot(path)
    out = train(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    card = read_card(out)
    assert card["training"]["base"] == str(base) and card["training"]["epochs_run"] == 2
    assert card["training"]["history"][0]["step"] > 0
    bot = Bot(out)
    assert bot.tokenizer.pad_token is not None and "<|intent|>" in bot.tokenizer.get_vocab()
    assert bot.model.lm.get_input_embeddings().weight.shape[0] == len(bot.tokenizer)
    assert bot.turn("cancel my order").intent in spec.intents


def test_noisy_views_are_deterministic_and_never_empty():
    import random

    from bot.train import _noisy_view

    text, vocab = "please cancel my order right now", ["zebra", "quartz"]
    views = [_noisy_view(text, 0.5, random.Random(f"0-1-{k}"), vocab) for k in range(50)]
    assert views == [_noisy_view(text, 0.5, random.Random(f"0-1-{k}"), vocab) for k in range(50)]
    assert all(v and set(v.split()) <= set(text.split()) | set(vocab) for v in views)
    assert len(set(views)) > 10 and any("zebra" in v or "quartz" in v for v in views)
    assert any(len(set(v.split()) & set(text.split())) < 6 for v in views)  # some words dropped
    assert _noisy_view(text, 0.0, random.Random(0), vocab) == text and _noisy_view("hi", 0.9, random.Random(0)) == "hi"


def test_records_are_trained_on_as_the_served_turn_reads_them(tmp_path):
    """No train/serve skew: what a served turn redacts (here an order number, an e-mail address, a
    full-width letter) is redacted in the training records too, so the model learns the placeholders."""
    from bot.spec import load_bot
    from bot.train import Trainer
    from safety.guard import served_text

    bot = tiny_bot_dict()
    bot["intents"]["track_order"]["examples"] += ["where is order 00004587345", "status of my ｏrder, mail me at "
                                                  "jo@example.com"]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    spec, _ = load_bot(path)
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None, read=served_text)
    texts = {r.text for r in trainer.train_records + trainer.val_records}
    assert "where is order <ACCOUNT_NUMBER>" in texts and "status of my order, mail me at <EMAIL_ADDRESS>" in texts
    assert len(texts) == len({e.text for e in spec.examples})  # nothing dropped or merged


def test_training_reads_records_in_conversations_as_the_served_classifier_does(tmp_path):
    """A dialogue turn is read after its own earlier turns; a single example is sometimes the earlier turn of a
    generic follow-up that keeps its intent, sometimes read after another intent's example, else alone."""
    import random

    from bot.spec import load_bot
    from bot.train import FOLLOW_UP_ALONE, FOLLOW_UP_SHARE, OUTLIERS_IN_CONTEXT, SWITCH_SHARE, Trainer

    bot = tiny_bot_dict()
    bot["dialogues"] = [[{"user": "hi there", "bot": "Hello!"},
                         {"user": "my parcel never came, order 12", "bot": "Let me look.", "intent": "track_order"}]]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    spec, _ = load_bot(path)
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    recs = {r.text: r for r in trainer.train_records + trainer.val_records}
    turn = recs["my parcel never came, order 12"]
    assert trainer.in_context(turn, turn.text, random.Random(0)) == (["hi there"], turn.text)
    single = next(r for r in trainer.train_records if not r.context)
    seen = [trainer.in_context(single, single.text, random.Random(k)) for k in range(2000)]
    follow = [s for s in seen if s[0] == [single.text]]
    switch = [s for s in seen if s[0] and s[0] != [single.text]]
    alone = [s for s in seen if not s[0]]
    assert abs(len(follow) / 2000 - FOLLOW_UP_SHARE) < 0.03 and len({m for _, m in follow}) > 20
    assert all(m != single.text for _, m in follow)
    other = {r.text: r.intent for r in trainer.train_records}
    assert all(m == single.text and other[c[0]] != single.intent for c, m in switch)
    assert 0.5 * SWITCH_SHARE < len(switch) / 2000 < SWITCH_SHARE + 0.03
    assert all(m == single.text for _, m in alone)
    # outlier exposure adds items read in a conversation: generated follow-ups alone (alone, they name no intent)
    # and outlier texts after a training example (an unknown question stays unknown after a known one)
    assert trainer.outliers_in_context == int(trainer.outlier_batch * OUTLIERS_IN_CONTEXT) > 0
    seen = [trainer.outlier_in_context(random.Random(k)) for k in range(2000)]
    alone = [m for c, m in seen if not c]
    after = [(c, m) for c, m in seen if c]
    assert abs(len(alone) / 2000 - FOLLOW_UP_ALONE) < 0.04 and len(set(alone)) > 20
    assert all(len(c) == 1 and c[0] in other and m in trainer.outliers() for c, m in after)
    # reading each message alone (classify_context 0) trains on each record alone
    spec.settings.classify_context = 0
    flat = Trainer(spec, tmp_path / "n", progress=False, log=lambda *a: None)
    assert all(flat.in_context(r, r.text, random.Random(k)) == ([], r.text)
               for k, r in enumerate(flat.train_records))
    assert flat.outliers_in_context == 0


def test_weight_average_is_the_warmed_up_moving_average_and_the_model_gets_its_weights_back(tmp_path):
    """Polyak averaging (training.weight_average) against a hand computation: decay min(d, (1 + t) / (10 + t))
    at update t; inside `applied()` the model holds the average, after it its own weights; save/load round-trips."""
    import torch

    from bot.train import WeightAverage

    model = torch.nn.Linear(2, 1, bias=False)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0]]))
    avg = WeightAverage(model, 0.2)  # the warm-up reaches the cap at the third update
    assert set(avg.shadow) == {"weight"}  # only what training changes
    expected = torch.tensor([0.0, 0.0])
    for t, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        avg.update()
        d = min(0.2, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
    assert torch.allclose(avg.shadow["weight"][0], expected)
    with avg.applied():
        assert torch.allclose(model.weight[0], expected)
    assert (model.weight == 16.0).all()

    avg.save(tmp_path / "a.safetensors")
    again = WeightAverage(model, 0.2)
    again.load(tmp_path / "a.safetensors", avg.updates)
    assert torch.equal(again.shadow["weight"], avg.shadow["weight"]) and again.updates == 5


def test_rdrop_passes_the_batch_twice_and_its_kl_is_zero_without_dropout(tmp_path):
    """R-drop (training.rdrop): with dropout on, the two passes differ (KL > 0); with dropout off they are the same
    pass, so KL is 0 and the cross-entropy equals the one-pass cross-entropy. Off (0): one pass, KL 0."""
    import torch
    import torch.nn.functional as F

    from bot.spec import parse_bot
    from bot.train import Trainer

    bot = tiny_bot_dict(rdrop=1.0)
    bot["model"]["dropout"] = 0.1
    spec = parse_bot(yaml.safe_dump(bot), str(tmp_path / "b.yaml"))
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    trainer._setup(resume=False)
    recs = trainer.train_records[:6]
    b = trainer.enc.pad_batch([trainer.enc.classify(r.text) for r in recs])
    y = torch.tensor([trainer.model.intents.index(r.intent) for r in recs])
    trainer.model.train()
    ce, kl = trainer._intent_loss(b, y)
    assert float(kl.detach()) > 0
    trainer.model.eval()
    ce, kl = trainer._intent_loss(b, y)
    one = F.cross_entropy(trainer.model.intent_logits(b["input_ids"], b["attention_mask"]), y)
    assert abs(float(kl.detach())) < 1e-6 and torch.allclose(ce, one, atol=1e-6)
    trainer.training.rdrop = 0.0
    trainer.model.train()
    assert float(trainer._intent_loss(b, y)[1].detach()) == 0.0


def test_public_pretraining_text_reaches_the_lm_but_not_the_tokenizer(tmp_path):
    from bot.spec import load_bot, parse_bot
    from bot.train import Trainer

    public = tmp_path / "public.txt"
    public.write_text("book a table for two tonight\nplay some jazz from the seventies\n", encoding="utf-8")
    bot = tiny_bot_dict(pretrain_corpus=str(public))
    spec = parse_bot(yaml.safe_dump(bot), str(tmp_path / "b.yaml"))
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    assert "play some jazz from the seventies" in trainer.pretrain_texts()
    assert "play some jazz from the seventies" not in trainer.tokenizer_corpus()
    assert set(trainer.tokenizer_corpus()) <= set(trainer.pretrain_texts())

    bot["training"]["pretrain_corpus"] = str(tmp_path / "missing.txt")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bot), encoding="utf-8")
    _, problems = load_bot(path, strict=False)
    assert any("training.pretrain_corpus: no such file" in p.message and "missing.txt" in p.message
               for p in problems)


def test_bf16_precision_autocasts_the_forward_passes_learns_and_ships_float32_weights(tmp_path, monkeypatch):
    """training.precision bf16: every forward pass of the training loop (pre-training and fine-tuning) runs its
    matrix products in bfloat16, validation runs in float32, the losses are taken in float32, the tiny bot still
    learns, and the shipped weights are float32 and the card says what was done. fp32: no bfloat16 anywhere.
    How much it learns depends on the CPU's bfloat16 kernels (AVX512-BF16, AMX, emulated): 0.67 validation accuracy
    on an Intel AMX machine where AMD reached 1.0, so the check is that it learns at all (validation loss below a
    uniform guess's); accuracy in bf16 is benchmarks/train_step.py's and intent_accuracy.py's to measure."""
    import math

    import torch

    from bot import model as models
    from bot.spec import load_bot, parse_bot
    from bot.train import Trainer, train

    seen = []  # (grad enabled, i.e. a training forward pass; dtype of the first MLP's output)
    build = models.build

    def probed(*args, **kwargs):
        model = build(*args, **kwargs)
        model.lm.transformer.h[0].mlp.c_fc.register_forward_hook(
            lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
        return model

    monkeypatch.delenv("CANDOR_TRAINING_PRECISION", raising=False)  # this test chooses each precision itself
    monkeypatch.setattr(models, "build", probed)
    bot = tiny_bot_dict(precision="bf16")
    spec = parse_bot(yaml.safe_dump(bot), str(tmp_path / "b.yaml"))
    out = train(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    steps = read_card(out)["training"]["steps"]
    assert {d for g, d in seen if g} == {torch.bfloat16} and sum(g for g, _ in seen) >= steps
    assert {d for g, d in seen if not g} == {torch.float32}  # validation and calibration
    card = read_card(out)
    assert card["training"]["precision"] == "bf16", card["training"]
    assert card["training"]["val_loss"] < math.log(len(spec.intents)), card["training"]  # it learned
    assert "forward passes in bfloat16 autocast (weights float32)" in (out / "model_card.md").read_text()
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}

    probe = Trainer(spec, tmp_path / "probe", progress=False, log=lambda *a: None)
    probe._setup(resume=False)
    recs = probe.train_records[:4]
    b = probe.enc.pad_batch([probe.enc.classify(r.text) for r in recs])
    with probe._autocast():
        ce, _ = probe._intent_loss(b, torch.tensor([probe.model.intents.index(r.intent) for r in recs]))
        lm = probe.model.lm_loss(**probe.enc.pad_batch([probe.enc.lm(r.text) for r in recs]))
    assert ce.dtype == lm.dtype == torch.float32
    seen.clear()
    spec.training.precision, spec.training.epochs = "fp32", 1
    train(spec, tmp_path / "m32", progress=False, log=lambda *a: None)
    assert {d for _, d in seen} == {torch.float32}

    bot["training"]["precision"] = "fp16"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bot), encoding="utf-8")
    _, problems = load_bot(path, strict=False)
    assert any("training.precision must be 'fp32', 'bf16' or 'auto', got 'fp16'" in p.message for p in problems)
    # auto: bf16 where this device has native bfloat16, fp32 elsewhere and under DP (per-record trainers)
    spec.training.precision = "auto"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert Trainer(spec, tmp_path / "a", device="cpu", progress=False).precision == ("bf16" if native else "fp32")

    # The suite's --training-precision (CANDOR_TRAINING_PRECISION) replaces fp32 and auto, never bf16 or DP's fp32.
    for forced, written, want in (("bf16", "fp32", "bf16"), ("bf16", "auto", "bf16"), ("fp32", "auto", "fp32"),
                                  ("fp32", "bf16", "bf16")):
        monkeypatch.setenv("CANDOR_TRAINING_PRECISION", forced)
        spec.training.precision = written
        assert Trainer(spec, tmp_path / "a", device="cpu", progress=False).precision == want, (forced, written)
    spec.training.precision = "auto"
    spec.privacy.enabled = True
    for forced in (None, "bf16"):
        if forced:
            monkeypatch.setenv("CANDOR_TRAINING_PRECISION", forced)
        else:
            monkeypatch.delenv("CANDOR_TRAINING_PRECISION")
        assert Trainer(spec, tmp_path / "a", device="cpu", progress=False).precision == "fp32"


def test_the_ngram_rows_train_and_ship_with_the_model(tmp_path):
    """The intent head's n-gram rows (bot/ngrams.py) start at zero, are trained with the rest of the model, and the
    saved model carries them (config `ngram_buckets`, `ngrams.weight`; row 0, padding, stays zero)."""
    import torch

    from bot.model import load
    from bot.spec import parse_bot
    from bot.train import train

    spec = parse_bot(yaml.safe_dump(tiny_bot_dict()), str(tmp_path / "b.yaml"))
    spec.training.epochs, spec.training.pretrain_epochs = 1, 0
    model, _ = load(train(spec, tmp_path / "m", progress=False, log=lambda *a: None))
    assert model.ngrams is not None and model.ngrams.num_embeddings == spec.model.ngram_buckets
    assert model.ngrams.weight.abs().sum() > 0 and torch.all(model.ngrams.weight[0] == 0)
