"""DP-SGD: the GPT-2 conversions, per-record gradients against a slow exact oracle, clipping, noise,
the accountant and the ledger across an interruption."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from opacus import GradSampleModule, PrivacyEngine
from opacus.accountants import PRVAccountant
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch.utils.data import DataLoader, TensorDataset

from bot import model as models
from bot.data import Encoder, Record
from bot.dialogue import Bot, Conversation
from bot.model import read_card
from bot.spec import ModelSettings, Turn, load_bot
from safety.gpt2_dp import add_lora, conv1d_to_linear, linear_to_conv1d, merge_lora, position_ids, train_top, untie
from bot.spec import BotFileError
from bot.train import Trainer
from safety.privacy import DPSGD, default_delta, per_record_loss
from tests.conftest import TINY_MODEL, dp_bot_file, tiny_bot_dict

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [Record("cancel my order", "a", "Sure, cancelled."), Record("where is my parcel now", "b", "On its way."),
           Record("refund", "c", "Refund started for you today."), Record("hi, cancel the order please", "a", "Done.")]


def _tiny():
    settings = ModelSettings(**TINY_MODEL)
    tok = models.make_tokenizer(settings, [r.text + " " + r.reply for r in RECORDS] * 10)
    torch.manual_seed(0)
    model = models.build(settings, tok, ["a", "b", "c"])
    conv1d_to_linear(model.lm)
    untie(model.lm)
    return model, Encoder(tok, 64)


def _batch(enc, records):
    seqs, labels, pos = [], [], []
    for r in records:
        ids, lab = enc.reply(r, 32)
        seqs.append(ids), labels.append(lab), pos.append(len(enc.classify(r.text)) - 1)
    b = enc.pad_batch(seqs, labels)
    y = torch.tensor([["a", "b", "c"].index(r.intent) for r in records])
    return b, torch.tensor(pos), y


def _per_record_loss(module, b, pos, y):
    return per_record_loss(module, b, pos, y, reply_weight=0.5)


def _oracle_grads(model, enc, records):
    """Per-record gradients the slow way: one record at a time, no padding."""
    out = []
    for r in records:
        model.zero_grad()
        b, pos, y = _batch(enc, [r])
        _per_record_loss(model, b, pos, y).sum().backward()
        out.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    return out


def test_conv1d_linear_round_trip_keeps_the_function():
    settings = ModelSettings(**TINY_MODEL)
    tok = models.make_tokenizer(settings, ["cancel my order"] * 20)
    model = models.build(settings, tok, ["a", "b"]).eval()
    ids = torch.tensor([Encoder(tok, 64).classify("cancel my order")])
    before = model.lm(ids).logits
    assert conv1d_to_linear(model.lm) == 4 * TINY_MODEL["n_layer"]
    torch.testing.assert_close(model.lm(ids).logits, before)
    assert linear_to_conv1d(model.lm) == 4 * TINY_MODEL["n_layer"]
    torch.testing.assert_close(model.lm(ids).logits, before)
    untie(model.lm)
    assert model.lm.lm_head.weight is not model.lm.transformer.wte.weight
    pid = position_ids(torch.ones(3, 5, dtype=torch.long))
    assert pid.shape == (3, 5) and pid.is_contiguous() and pid[2].tolist() == [0, 1, 2, 3, 4]


def test_train_top_freezes_everything_below_the_top_blocks():
    model, enc = _tiny()
    names = train_top(model, 1, lm_head=False)
    assert names and all(n.startswith(("lm.transformer.h.1.", "lm.transformer.ln_f.", "score.", "ngrams.")) for n in names)
    assert "ngrams.weight" in names  # the intent head's n-gram rows train with it
    assert any(n.startswith("lm.transformer.h.1.") for n in names) and "score.weight" in names
    b, pos, y = _batch(enc, RECORDS)
    _per_record_loss(model, b, pos, y).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in names), n
    assert "lm.lm_head.weight" in train_top(model, 0, lm_head=True)
    assert len(train_top(model, -1, lm_head=False)) == len(list(model.parameters()))


def test_per_record_gradients_match_the_micro_batch_oracle():
    model, enc = _tiny()
    model.train()  # Opacus captures activations in training mode only; TINY_MODEL has dropout 0
    oracle = _oracle_grads(model, enc, RECORDS)
    gsm = GradSampleModule(model, loss_reduction="sum")
    b, pos, y = _batch(enc, RECORDS)
    _per_record_loss(gsm, b, pos, y).sum().backward()
    checked = 0
    for name, p in model.named_parameters():
        for i in range(len(RECORDS)):
            torch.testing.assert_close(p.grad_sample[i], oracle[i][name], atol=1e-5, rtol=1e-4, msg=name)
        checked += 1
    assert checked == len(list(model.parameters()))
    gsm._close()


def _check_ghost_clipping(model, enc):
    """Ghost-clipped gradients of the trainable parameters == the sum of clipped oracle gradients;
    frozen parameters get none. Returns the Opacus-wrapped model."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    oracle = _oracle_grads(model, enc, RECORDS)
    norms = [torch.sqrt(sum((o[n] ** 2).sum() for n in trainable)) for o in oracle]
    clip = float(min(norms)) / 2  # every record is clipped
    expected = {n: sum(min(1.0, clip / float(norms[i])) * oracle[i][n] for i in range(len(RECORDS))) for n in trainable}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loader = DataLoader(TensorDataset(torch.arange(4)), batch_size=4)
    dp_model, opt, _, _ = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, criterion=torch.nn.CrossEntropyLoss(),
        noise_multiplier=0.0, max_grad_norm=clip, grad_sample_mode="ghost", poisson_sampling=False)
    b, pos, y = _batch(enc, RECORDS)
    DPTensorFastGradientClipping(dp_model, opt, _per_record_loss(dp_model, b, pos, y), "mean").backward()
    for n, p in model.named_parameters():
        if n in trainable:
            torch.testing.assert_close(p.grad, expected[n], atol=2e-5, rtol=1e-3, msg=n)
        else:
            assert p.grad is None, n
    return dp_model


def test_ghost_clipping_gives_the_sum_of_clipped_oracle_gradients():
    model, enc = _tiny()
    _check_ghost_clipping(model, enc)


def test_lora_under_ghost_clipping_matches_the_oracle_and_merges_for_saving():
    model, enc = _tiny()
    names = add_lora(model, rank=4)
    trainable = train_top(model, 0, lm_head=False, freeze_rest=False)
    assert set(names) < set(trainable) and "score.weight" in trainable
    assert all("lora_" in n or n.startswith(("lm.transformer.ln_f.", "score.", "ngrams.")) for n in trainable)
    with torch.no_grad():  # peft starts B at zero; give the adapters a real effect
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    dp_model = _check_ghost_clipping(model, enc)
    b, pos, _ = _batch(enc, RECORDS)
    dp_model._close()
    model.eval()
    before = model(b["input_ids"], b["attention_mask"], position_ids(b["attention_mask"]), pos)
    assert merge_lora(model.lm) == 4 * TINY_MODEL["n_layer"]
    assert not any("lora_" in n for n, _ in model.named_parameters())
    linear_to_conv1d(model.lm)
    after = model(b["input_ids"], b["attention_mask"], position_ids(b["attention_mask"]), pos)
    for x, z in zip(before, after):
        torch.testing.assert_close(z, x, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_bookkeeping_clipping_gives_the_sum_of_clipped_oracle_gradients(lora):
    """One backward pass (safety/bookkeeping.py) == per-record gradients taken one record at a time, each
    clipped, summed; some records clipped and some not."""
    from safety.bookkeeping import BookKeeping

    model, enc = _tiny()
    if lora:
        add_lora(model, rank=4)
        train_top(model, 0, lm_head=False, freeze_rest=False)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.05)
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    oracle = _oracle_grads(model, enc, RECORDS)
    norms = sorted(float(torch.sqrt(sum((o[n] ** 2).sum() for n in trainable))) for o in oracle)
    clip = (norms[1] + norms[2]) / 2  # two records clipped, two not
    expected = {n: sum(min(1.0, clip / float(torch.sqrt(sum((o[k] ** 2).sum() for k in trainable)))) * o[n]
                       for o in oracle) for n in trainable}
    for n, p in model.named_parameters():  # stale gradients (e.g. the last public pre-training step's) are replaced
        p.grad = torch.ones_like(p) if n in trainable else None
    bk = BookKeeping(model, clip)
    b, pos, y = _batch(enc, RECORDS)
    with bk.recording():
        loss = _per_record_loss(model, b, pos, y)
    bk.backward(loss)
    torch.testing.assert_close(sorted(bk.norms.tolist()), norms, atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        if n in trainable:
            torch.testing.assert_close(p.grad, expected[n], atol=2e-5, rtol=1e-3, msg=n)
        else:
            assert p.grad is None, n
    bk.close()


def test_bookkeeping_refuses_what_it_cannot_clip_exactly():
    """Unknown layers, shared weights and a layer run twice would each give a wrong per-record norm."""
    from safety.bookkeeping import BookKeeping

    with pytest.raises(NotImplementedError, match="no handler for trainable Conv1d"):
        BookKeeping(torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1), torch.nn.Linear(2, 2)), 1.0)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    b.weight = a.weight
    with pytest.raises(NotImplementedError, match="shared between modules"):
        BookKeeping(torch.nn.Sequential(a, b), 1.0)
    twice = torch.nn.Linear(2, 2)
    bk = BookKeeping(twice, 1.0)
    with pytest.raises(NotImplementedError, match="ran twice"), bk.recording():
        twice(twice(torch.ones(3, 2)))


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_noise_is_really_added(sigma):
    model, enc = _tiny()
    clip = 1e-3  # tiny norm: the clipped signal is negligible next to the noise
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(torch.arange(4)), batch_size=4)
    dp_model, opt, _, _ = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, criterion=torch.nn.CrossEntropyLoss(),
        noise_multiplier=sigma, max_grad_norm=clip, grad_sample_mode="ghost", poisson_sampling=False)
    b, pos, y = _batch(enc, RECORDS)
    DPTensorFastGradientClipping(dp_model, opt, _per_record_loss(dp_model, b, pos, y), "mean").backward()
    opt.step()
    step = torch.cat([(before[n] - p.detach()).flatten() for n, p in model.named_parameters()])
    # clipped signal: at most clip in norm; noise: N(0, (sigma * clip / batch)^2) per coordinate
    if sigma == 0:
        assert 0 < step.norm() <= clip + 1e-7  # the mean of 4 clipped gradients, nothing more
    else:
        std = float(step.std())
        assert 0.9 * sigma * clip / 4 < std < 1.1 * sigma * clip / 4, std
        assert abs(float(step.mean())) < 0.1 * sigma * clip / 4


def _dp_bot(tmp_path, epochs=3):
    return dp_bot_file(tmp_path, {"epochs": epochs})


def test_reported_epsilon_is_opacus_accountants(tmp_path):
    spec, _ = load_bot(_dp_bot(tmp_path))
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    out = trainer.run()
    p = read_card(out)["privacy"]
    steps = trainer.state.step
    acc = PRVAccountant()
    acc.history = [(p["noise_multiplier"], p["sample_rate"], p["steps"])]
    # the stated ε = the accountant's ε for DP-SGD + the noisy count's ε (basic composition)
    assert p["epsilon_sgd"] == pytest.approx(acc.get_epsilon(p["delta"]), rel=1e-9)
    assert p["epsilon_sgd"] == pytest.approx(trainer.privacy.engine.get_epsilon(p["delta"]), rel=1e-9)
    assert p["epsilon"] == pytest.approx(p["epsilon_sgd"] + p["epsilon_count"]) and p["epsilon_count"] == 0.05
    assert p["epsilon"] <= 8.0 + 0.05 and p["epsilon"] > 6.0
    assert p["steps"] == 3 * round(1 / p["sample_rate"]) and steps > p["steps"]  # pre-training steps come first
    # the sample rate and δ come from the noisy count alone
    assert round(1 / p["sample_rate"]) == max(1, round(p["records_noisy"] / 16))
    assert p["delta"] == default_delta(p["records_noisy"]) < 1 / len(trainer.train_records)
    md = (out / "model_card.md").read_text()
    assert "(ε = " in md and "Mironov" in md and "not published" in md
    assert (tmp_path / "public.txt").name in p["public_data"]


def test_train_honours_privacy_enabled_in_the_bot_file(tmp_path, monkeypatch):
    """`bot.train.train(spec)` on a DP bot file trains with DP-SGD (found through the `candor.privacy` entry point)
    and states the accountant's ε; with no DP engine installed it refuses rather than train without DP."""
    from bot import train as training

    spec, _ = load_bot(_dp_bot(tmp_path, epochs=1))
    assert spec.privacy.enabled
    out = training.train(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    p = read_card(out)["privacy"]
    acc = PRVAccountant()
    acc.history = [tuple(h) for h in p["history"]]
    assert p["dp"] and p["steps"] > 0
    assert p["epsilon"] == pytest.approx(acc.get_epsilon(p["delta"]) + p["epsilon_count"], rel=1e-9)
    assert 0 < p["epsilon"] <= spec.privacy.target_epsilon
    monkeypatch.setattr(training, "entry_points", lambda **kw: [])
    with pytest.raises(RuntimeError, match="no DP-SGD engine"):
        training.train(spec, tmp_path / "m2", progress=False, log=lambda *a: None)
    assert not (tmp_path / "m2").exists()


def test_dp_card_publishes_no_exact_counts(tmp_path):
    spec, _ = load_bot(_dp_bot(tmp_path, epochs=1))
    spec.settings.distance_quantile = 0.99  # asked for: refused below
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    card = read_card(trainer.run())
    assert all("examples" not in i for i in card["intents"].values())
    assert not {"train_examples", "validation_examples", "reply_examples"} & set(card["training"])
    assert "records" not in card["privacy"] and card["privacy"]["records_noisy"] >= 1
    n, noisy = len(trainer.train_records), card["privacy"]["records_noisy"]
    text = (tmp_path / "m" / "model_card.md").read_text()
    assert f"about {noisy} training" in text  # the card quotes the noisy count
    # and never the exact one (the noise, Laplace rounded, lands on it now and then: then both read the same)
    assert noisy == n or f" {n} training" not in text
    # each record is protected on its own: trained, and so served, without other records as earlier turns
    assert spec.settings.classify_context == 1 and card["settings"]["classify_context"] == 0
    assert card["training"]["conversation"] == {"earlier_turns_read": 0}
    assert Bot(tmp_path / "m").earlier_turns(Conversation([Turn("cancel my order", "ok", "cancel_order")])) == []
    # no index of the private records' features for the distance rule (the guarantee covers the weights only)
    assert spec.settings.distance_quantile > 0 and not (tmp_path / "m" / "neighbours.safetensors").exists()
    assert card["training"]["distance_rule"]["enabled"] is False and "not cover" in card["training"]["distance_rule"]["why"]
    assert Bot(tmp_path / "m").neighbours is None and Bot(tmp_path / "m").classify("cancel my order").distance is None


def test_noisy_count_is_laplace_around_the_true_count():
    from safety.privacy import noisy_count

    draws = [noisy_count(1000, 0.05) for _ in range(4000)]
    mean = sum(draws) / len(draws)
    mad = sum(abs(d - 1000) for d in draws) / len(draws)
    assert abs(mean - 1000) < 3 and 17 < mad < 23  # Laplace(scale 20): mean 0, mean |x| = 20
    assert len(set(draws)) > 50


def test_dp_noise_cannot_be_replayed_from_the_seed(tmp_path):
    """Same bot, same seed, same data order: DP runs still differ (noise and sampling from the OS CSPRNG)."""
    spec, _ = load_bot(_dp_bot(tmp_path, epochs=1))
    weights = []
    for k in range(2):
        trainer = Trainer(spec, tmp_path / f"m{k}", progress=False, log=lambda *a: None)
        out = trainer.run()
        from safetensors.torch import load_file
        weights.append(load_file(str(out / "model.safetensors"))["score.weight"])
        assert "CSPRNG" in read_card(out)["privacy"]["noise"]
    assert not torch.equal(weights[0], weights[1])


def test_reply_weight_zero_freezes_the_lm_head_under_dp(tmp_path):
    before = {}

    class Spy(DPSGD):
        def start(self, trainer):
            before["head"] = trainer.model.lm.get_output_embeddings().weight.detach().clone()
            before["score"] = trainer.model.score.weight.detach().clone()
            super().start(trainer)

    spec, _ = load_bot(_dp_bot(tmp_path, epochs=1))
    spec.training.reply_weight = 0.0
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None, privacy=Spy(spec, log=lambda *a: None))
    trainer.run()
    head = trainer.model.lm.get_output_embeddings().weight
    assert not head.requires_grad and torch.equal(head.detach(), before["head"])  # no noise-only updates
    assert not torch.equal(trainer.model.score.weight.detach(), before["score"])  # the intent head did train
    assert "frozen" in read_card(tmp_path / "m")["privacy"]["lm_head"]


def test_an_empty_poisson_batch_is_a_noise_only_step(tmp_path, monkeypatch):
    """Expected batch ~1: about a third of the Poisson batches are empty; each is still a (noise-only) step."""
    from safety import privacy

    # the Laplace count (scale 20 here) can land near 0 on a tiny bot and make the sample rate 1;
    # this test is about empty batches, so the count is the true one
    monkeypatch.setattr(privacy, "noisy_count", lambda n, epsilon: n)
    spec, _ = load_bot(_dp_bot(tmp_path, epochs=1))
    spec.privacy.logical_batch, spec.privacy.physical_batch = 1, 16  # one physical batch per step
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    empty = []
    real = trainer.privacy.batch
    trainer.privacy.batch = lambda trainer_, idx: empty.append(False) or real(trainer_, idx)
    trainer.run()
    p = read_card(tmp_path / "m")["privacy"]
    assert p["steps"] == round(1 / p["sample_rate"]) > len(empty)  # steps without a batch: the empty ones


def test_resume_at_an_epochs_last_step_takes_no_extra_step(tmp_path):
    spec, _ = load_bot(_dp_bot(tmp_path, epochs=2))
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    trainer._setup(resume=False)
    trainer.state.stage, trainer.state.epoch = "finetune", 0
    trainer._finetuned_model()
    trainer.opt = trainer._optimizer()
    trainer.privacy.start(trainer)
    assert trainer.privacy.steps_per_epoch == len(trainer.privacy.loader)
    trainer.state.batch = trainer.privacy.steps_per_epoch  # a checkpoint taken right after the epoch's last step
    step, history = trainer.state.step, list(trainer.privacy.engine.accountant.history)
    trainer._finetune_epoch()
    assert trainer.state.step == step and trainer.privacy.engine.accountant.history == history


def test_joint_sequence_keeps_the_served_prefix_when_the_utterance_is_long():
    model, enc = _tiny()
    long = " ".join(["please cancel my order now"] * 40)
    ids, labels, pos = enc.joint(long, "a", "Sure, cancelled.", 32)
    prefix = enc.classify(long)
    assert ids[:len(prefix)] == prefix and pos == len(prefix) - 1 and ids[pos] == enc.intent
    assert len(ids) <= enc.max_length and all(x == -100 for x in labels[:pos + 1])
    short = enc.joint("cancel my order", "a", "Sure, cancelled.", 32)
    assert short[0][short[2]] == enc.intent and any(x != -100 for x in short[1])


def test_tokenizer_and_pretraining_never_see_private_text(tmp_path):
    spec, _ = load_bot(_dp_bot(tmp_path))
    trainer = Trainer(spec, tmp_path / "m", progress=False)
    seen = " ".join(trainer.tokenizer_corpus() + trainer.pretrain_texts())
    private = [e.text for e in spec.examples]
    assert not any(t in seen for t in private if len(t) > 12)
    # noisy views insert words from public/authored text only, never another record's words
    private_only = {w for t in private for w in t.split()} - set(seen.split())
    assert private_only and not private_only & set(trainer.vocab)


def test_resume_continues_the_privacy_ledger(tmp_path):
    path = _dp_bot(tmp_path, epochs=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ui.cli", "train", str(path), "-q", "--device", "cpu", "--checkpoint-every", "2"]
    ref = subprocess.run(cmd + ["-o", str(tmp_path / "ref")], env=env, cwd=ROOT, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out, ckpt = tmp_path / "run", tmp_path / "run.checkpoints"
    proc = subprocess.Popen(cmd + ["-o", str(out)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, state = time.time() + 300, {}
    while time.time() < deadline:
        pointer = ckpt / "latest.json"
        if pointer.is_file():
            try:
                state = json.loads((ckpt / json.loads(pointer.read_text())["dir"] / "state.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            if state["stage"] == "finetune" and state["privacy"].get("history"):
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done_before = sum(h[2] for h in state["privacy"]["history"])
    assert done_before > 0
    res = subprocess.run(cmd + ["-o", str(out), "--resume"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    for card in (read_card(tmp_path / "ref"), read_card(out)):
        p, t = card["privacy"], card["training"]
        # every DP step applied to the released weights is in the ledger, and nothing else
        assert p["steps"] == t["steps"] - t["finetune_start_step"] == sum(h[2] for h in p["history"])
        acc = PRVAccountant()
        acc.history = [tuple(h) for h in p["history"]]
        assert p["epsilon"] == pytest.approx(acc.get_epsilon(p["delta"]) + p["epsilon_count"], rel=1e-9)
    a, b = read_card(tmp_path / "ref")["privacy"], read_card(out)["privacy"]
    ledger = state["privacy"]
    # the resumed run keeps the checkpoint's noisy count, noise and sample rate (the count is released once)
    assert b["records_noisy"] == ledger["records_noisy"] and b["noise_multiplier"] == ledger["noise_multiplier"]
    assert b["sample_rate"] == ledger["sample_rate"]
    assert b["steps"] > done_before  # continued from the checkpoint's ledger, not from zero
    for p in (a, b):  # the interrupted epoch is finished, not restarted or cut short
        assert p["steps"] == 4 * round(1 / p["sample_rate"])
    assert read_card(out)["training"]["resumed_from_steps"]
    assert "ε = " in res.stdout  # the guarantee is printed after training


def test_privacy_report_says_when_there_is_no_guarantee(trained_tiny, capsys):
    from ui.cli import main

    assert main(["privacy", "report", str(trained_tiny)]) == 0
    assert "WITHOUT differential privacy" in capsys.readouterr().out


class _NoNoise(DPSGD):
    """The DP data path with σ = 0 (no guarantee at all): isolates the plumbing from the noise."""

    def start(self, trainer):
        super().start(trainer)
        self.opt.noise_multiplier = 0.0
        self.engine.get_epsilon = lambda *a: 0.0

    def ledger(self):
        return self.record

    def card(self, trainer):
        return {}


def test_dp_plumbing_without_noise_learns_the_intents(tmp_path, monkeypatch):
    """Clipping, Poisson batches, one sequence per record: with σ = 0 it must learn like plain training."""
    monkeypatch.setattr("safety.privacy.noisy_count", lambda n, epsilon: n)  # the plan, not the count, is tested
    # Poisson batches normally come from the OS CSPRNG; on 12 validation records one unlucky draw in about
    # ten left an intent unlearned after 10 epochs (0.67), so the draw is fixed here: the plumbing is tested.
    monkeypatch.setattr("safety.privacy.os_seeded_generator", lambda device: torch.Generator(device=device).manual_seed(0))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bot_dict(epochs=10, reply_weight=0.0), sort_keys=False))
    spec, _ = load_bot(path)
    spec.privacy.enabled, spec.privacy.logical_batch, spec.privacy.physical_batch = True, 16, 16
    spec.privacy.public_corpus = str(path)
    spec.privacy.epochs, spec.privacy.head_init = 10, "random"  # DP-SGD's plumbing alone, from a random head
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None,
                      privacy=_NoNoise(spec, log=lambda *a: None))
    trainer.run()
    accuracy = [h["val_accuracy"] for h in trainer.state.history]
    assert accuracy[-1] >= 0.75, accuracy  # 4 intents: chance is 0.25


def test_candor_train_dp_with_lora_saves_a_plain_merged_gpt2(tmp_path, capsys):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from ui.cli import main

    out = tmp_path / "m"
    assert main(["train", str(_dp_bot(tmp_path, epochs=2)), "-q", "--device", "cpu", "--lora-rank", "2",
                 "-o", str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert "score.weight" in keys and not any("lora" in k or "base_layer" in k for k in keys)
    p = read_card(out)["privacy"]
    assert p["trained"].startswith("LoRA adapters of rank 2") and p["epsilon"] <= 8.05
    lm = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)  # plain GPT-2 (Conv1D) again
    assert type(lm.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert "LoRA adapters of rank 2" in capsys.readouterr().out + (out / "model_card.md").read_text()


def test_imported_responses_are_private_under_dp_unless_declared_public(tmp_path):
    spec, _ = load_bot(_dp_bot(tmp_path, epochs=1))
    for intent in spec.intents.values():
        intent.responses_source = "response column of rows.csv"
    replies = [r for i in spec.intents.values() for r in i.responses]
    logged = []
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=logged.append)
    assert not set(replies) & set(trainer.tokenizer_corpus())  # not authored text: not for the tokenizer
    assert not any(r.reply for r in trainer.train_records)  # nor reply training
    card = read_card(trainer.run())
    assert all(i["responses"] == [] for i in card["intents"].values())  # nor shipped
    assert "treated as private" in card["privacy"]["not_covered"] and "rows.csv" in card["privacy"]["not_covered"]
    assert any("not used and not shipped" in line for line in logged)

    spec.privacy.imported_responses = "public"
    logged.clear()
    public = Trainer(spec, tmp_path / "p", progress=False, log=logged.append)
    assert set(replies) <= set(public.tokenizer_corpus())
    assert any("DECLARED PUBLIC" in line for line in logged) and "declared public" in public.privacy.responses_note


def test_importers_mark_responses_taken_from_data(tmp_path):
    from bot.importers import from_csv
    from bot.spec import dump_bot

    rows = tmp_path / "rows.csv"
    rows.write_text("text,intent,response\ncancel my order,cancel,Done: cancelled.\nwhere is it,track,On its way.\n"
                    "stop the order,cancel,Done: cancelled.\ntrack my parcel,track,On its way.\n")
    spec = from_csv(rows)
    assert {i.responses_source for i in spec.intents.values()} == {"response column of rows.csv"}
    dump_bot(spec, tmp_path / "bot.yaml")  # the mark survives the bot file
    again, _ = load_bot(tmp_path / "bot.yaml", strict=False)
    assert again.intents["cancel"].responses_source == "response column of rows.csv"


def test_prototype_sums_have_sensitivity_one_and_give_the_nearest_mean_rule():
    """One record moves one intent's sum by exactly a unit vector (the Gaussian mechanism's sensitivity), and
    the head made from the sums scores like the slow rule: cosine to each intent's mean whitened direction."""
    from safety.prototypes import head_weights, noisy_sums, unit_vectors, whitening

    torch.manual_seed(0)
    public = torch.randn(400, 16) * torch.linspace(0.1, 5, 16)  # anisotropic: whitening matters
    assert torch.allclose(torch.cov((public @ whitening(public, shrink=0.0)).T), torch.eye(16), atol=1e-3)
    transform = whitening(public)  # with the default ridge
    feats, labels = torch.randn(60, 16) * 3, torch.randint(0, 4, (60,))
    units = unit_vectors(feats, transform)
    assert torch.allclose(units.norm(dim=1), torch.ones(60), atol=1e-5)
    full = noisy_sums(units, labels, 4, 0.0, None)
    for i in (0, 17, 59):  # remove record i: only its intent's row moves, by a vector of length 1
        keep = torch.arange(60) != i
        diff = full - noisy_sums(units[keep], labels[keep], 4, 0.0, None)
        assert diff.norm(dim=1)[labels[i]] == pytest.approx(1.0, abs=1e-5)
        assert diff.norm() == pytest.approx(1.0, abs=1e-5)
    test = torch.randn(30, 16) * 3
    logits = test @ head_weights(full, transform, 1.0).T
    means = torch.stack([units[labels == c].mean(0) for c in range(4)])
    slow = torch.tensor([[float(torch.nn.functional.cosine_similarity(t @ transform, m, dim=0)) for m in means]
                         for t in test])
    assert torch.equal(logits.argmax(1), slow.argmax(1))
    # noise: σ in every coordinate of the sums
    noisy = noisy_sums(units, labels, 4, 2.0, torch.Generator().manual_seed(1)) - full
    assert noisy.std().item() == pytest.approx(2.0, rel=0.15)


def test_prototype_only_dp_model_is_accounted_and_says_so(tmp_path, monkeypatch):
    """head_init: prototype with no DP-SGD epochs: the prototype release is the whole private step, at σ for the
    full budget; the card's history is that one Gaussian release (sample rate 1, one step); the saved head is the
    release, and its whitening saw public text only."""
    import safety.prototypes
    seen = {}
    real = safety.prototypes.prototype_head

    def spy(model, enc, texts, labels, public_texts, sigma, generator, ngram_share):
        seen["public"], seen["private"], seen["share"] = public_texts, texts, ngram_share
        seen["weight"], seen["ngrams"] = out = real(model, enc, texts, labels, public_texts, sigma, generator,
                                                    ngram_share)
        return out

    monkeypatch.setattr(safety.prototypes, "prototype_head", spy)
    spec, _ = load_bot(dp_bot_file(tmp_path, {"epochs": 0}, head_init="prototype"))
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    out = trainer.run()
    from safetensors.torch import load_file
    saved = load_file(str(out / "model.safetensors"))
    assert torch.allclose(saved["score.weight"], seen["weight"])
    assert seen["share"] == 1.0 and torch.allclose(saved["ngrams.weight"], seen["ngrams"])  # the default share
    public = set((tmp_path / "public.txt").read_text().splitlines())
    assert seen["public"] and set(seen["public"]) <= public and not set(seen["private"]) & set(seen["public"])
    p = read_card(out)["privacy"]
    sigma = p["history"][0][0]
    assert p["history"] == [[sigma, 1.0, 1]] and p["steps"] == 0 and p["prototype_noise_multiplier"] == sigma
    acc = PRVAccountant()
    acc.history = [(sigma, 1.0, 1)]
    assert p["epsilon_sgd"] == pytest.approx(acc.get_epsilon(p["delta"]), rel=1e-9)
    assert 7.9 <= p["epsilon"] <= 8.0 + 1e-9  # σ is the smallest that keeps the stated ε within the target
    assert "prototypes" in p["head_init"] and "only (the prototypes)" in p["trained"]
    from safety.privacy import report
    text = report(out)
    assert "prototype release is the only private step" in text and "Intent head started from noisy" in text
    md = (out / "model_card.md").read_text()
    assert "Intent head started from noisy" in md and "Prototype release: noise multiplier" in md
    assert "DP-SGD: noise multiplier" not in md and "(the prototypes, composed" in md
    assert "no Poisson sampling" in p["noise"] and "Poisson sampling from" not in p["noise"]
    # without prototypes, zero epochs cannot be private training
    spec.privacy.head_init = "random"
    with pytest.raises(ValueError, match="head_init: prototype"):
        Trainer(spec, tmp_path / "m2", progress=False, log=lambda *a: None)


def test_prototypes_then_dp_sgd_compose_within_the_target(tmp_path):
    """Prototypes, then DP-SGD with the σ that the composition of both allows: the accountant's ε over the whole
    history (the Gaussian release first) is the stated ε, within the target."""
    spec, _ = load_bot(dp_bot_file(tmp_path, {"epochs": 2}, head_init="prototype", prototype_share=0.5))
    trainer = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    p = read_card(trainer.run())["privacy"]
    assert p["history"][0][1:] == [1.0, 1] and len(p["history"]) >= 2
    acc = PRVAccountant()
    acc.history = [tuple(h) for h in p["history"]]
    assert p["epsilon_sgd"] == pytest.approx(acc.get_epsilon(p["delta"]), rel=1e-9)
    assert 7.5 < p["epsilon"] <= 8.0 + 1e-9
    assert p["noise_multiplier"] > 0 and p["steps"] == 2 * round(1 / p["sample_rate"])  # DP-SGD's steps alone
    # an impossible plan fails before anything private is touched
    for share in (0.0, 1.5):
        spec.privacy.prototype_share = share
        with pytest.raises(ValueError, match="prototype_share"):
            Trainer(spec, tmp_path / "bad", progress=False, log=lambda *a: None)


def test_dp_training_refuses_what_it_does_not_do_yet(tmp_path):
    """R-drop, weight averaging, training.pretrain_corpus and bf16 precision are not wired into DP training: each is
    refused with a clear error rather than silently ignored. Label smoothing is applied to the per-record loss and
    carded."""
    for setting, value in (("rdrop", 1.0), ("weight_average", 0.99), ("pretrain_corpus", str(tmp_path / "p.txt")),
                           ("precision", "bf16")):
        (tmp_path / "p.txt").write_text("some public text\n")
        with pytest.raises(BotFileError, match=f"training.{setting}"):  # by the bot file's checks ...
            load_bot(dp_bot_file(tmp_path, {setting: value}))
        spec, _ = load_bot(dp_bot_file(tmp_path))
        setattr(spec.training, setting, value)
        with pytest.raises(ValueError, match=f"training.{setting}"):  # ... which training runs again
            Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None)
    spec, _ = load_bot(dp_bot_file(tmp_path, {"label_smoothing": 0.1}))
    out = Trainer(spec, tmp_path / "m", progress=False, log=lambda *a: None).run()
    assert read_card(out)["training"]["regularisation"] == {"label_smoothing": 0.1}
    card = (out / "model_card.md").read_text(encoding="utf-8")
    assert "- Intent fine-tuning: label smoothing 0.1" in card and "moving average" not in card


def test_candor_train_dp_with_no_other_flags_releases_prototypes_after_a_public_estimate(tmp_path, capsys):
    """`candor train --dp` with nothing else: a public base (tokenizer and LM pre-training on public text only),
    the expected accuracy measured on the bundled public stand-in before any private record is read, then the
    prototypes of the GPT-2 features and n-grams as the whole private step, at the accountant's ε; the progress
    shows ε spent beside validation accuracy."""
    import safety.privacy
    from ui.cli import main

    pub = tmp_path / "public.txt"
    pub.write_text("\n".join(["where is my parcel", "cancel the order", "money back please", "talk to someone"] * 30))
    bot = tiny_bot_dict(epochs=6)
    bot["privacy"] = {"public_corpus": str(pub)}  # the bot file says nothing else about privacy
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    order = []
    real_expect, real_release = safety.privacy.DPSGD._expect, safety.privacy.DPSGD._prototype_head

    def expect(self, trainer, sigma, steps):
        assert trainer.state.stage == "finetune"  # after the public pre-training, before anything private
        order.append("estimate")
        return real_expect(self, trainer, sigma, steps)

    def release(self, trainer, sigma):
        order.append("release")
        return real_release(self, trainer, sigma)

    out = tmp_path / "m"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safety.privacy.DPSGD, "_expect", expect)
        mp.setattr(safety.privacy.DPSGD, "_prototype_head", release)
        assert main(["train", str(path), "--dp", "--device", "cpu", "-o", str(out)]) == 0
    assert order == ["estimate", "release"]
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "DP plan: ε 8 at δ" in text and "the whole private step" in text
    assert "DP expected accuracy: " in text and "public_banking77.csv" in text
    assert "ε spent" in text and "validation accuracy" in text
    card = read_card(out)
    p = card["privacy"]
    sigma = p["history"][0][0]
    assert p["history"] == [[sigma, 1.0, 1]] and p["steps"] == 0  # the prototypes only: one Gaussian release
    acc = PRVAccountant()
    acc.history = [(sigma, 1.0, 1)]
    assert p["epsilon"] == pytest.approx(acc.get_epsilon(p["delta"]) + p["epsilon_count"], rel=1e-9)
    assert p["epsilon"] <= 8.0 + 1e-9 and "n-grams" in p["head_init"] and "n-gram rows" in p["trained"]
    assert 0 <= p["estimate"]["accuracy"] <= 1 and p["estimate"]["intents"] == len(bot["intents"])
    # calibrated on the stand-in's public test rows, never on the (uncovered) validation records
    calibration = card["training"]["calibration"]
    assert "public stand-in" in calibration["fitted_on"] and "validation" not in calibration["fitted_on"]
    assert calibration["temperature"] == pytest.approx(p["estimate"]["temperature"], abs=1e-4)
    assert json.loads((out / "config.json").read_text())["intent_temperature"] == pytest.approx(
        p["estimate"]["temperature"])
    assert "public.txt" in p["public_data"]  # the base: public text only, named on the card
    from safetensors.torch import load_file
    grams = load_file(str(out / "model.safetensors"))["ngrams.weight"]
    assert grams.abs().sum() > 0 and (grams[0] == 0).all()  # released n-gram rows; padding stays 0
