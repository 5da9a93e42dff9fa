"""Training on several processes (torchrun, gloo on CPU): the averaged gradient is the whole batch's, and
`candor train --nproc 2` gives a comparable model and, under DP, the same ε as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import dp_bot_file, free_port, tiny_bot_dict

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _data(n: int):
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _tokens(n: int):
    """Sequences of 1..5 "tokens" (as the LM loss: a mean over every target token of the batch)."""
    g = torch.Generator().manual_seed(100 + n)
    lengths = torch.randint(1, 6, (n,), generator=g)
    mask = torch.arange(5)[None, :] < lengths[:, None]
    return torch.randn(n, 5, 6, generator=g), torch.randint(0, 3, (n, 5), generator=g), mask, lengths.tolist()


def _token_loss(model, x, y, mask):
    return torch.nn.functional.cross_entropy(model(x)[mask], y[mask])


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from bot import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for n in (5, 1, 8):  # uneven shares, a rank with nothing, even shares
            model = _model()
            x, y = _data(n)
            part, weight = distributed.share(list(range(n)))
            loss = torch.nn.functional.cross_entropy(model(x[part]), y[part]) * weight
            loss.backward()
            distributed.average_gradients(model.parameters())
            save_file({k: p.grad.contiguous() for k, p in model.named_parameters()}, f"{out}/rank{rank}-n{n}.safetensors")
            model = _model()  # a mean over tokens: shares weighted by their token counts
            x, y, mask, lengths = _tokens(n)
            part, weight = distributed.share(list(range(n)), lengths)
            (_token_loss(model, x[part], y[part], mask[part]) * weight).backward()
            distributed.average_gradients(model.parameters())
            save_file({k: p.grad.contiguous() for k, p in model.named_parameters()}, f"{out}/rank{rank}-t{n}.safetensors")
    finally:
        dist.destroy_process_group()


def test_averaged_gradients_equal_the_whole_batch_gradient(tmp_path):
    torch.multiprocessing.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    for n in (5, 1, 8):
        model = _model()
        x, y = _data(n)
        torch.nn.functional.cross_entropy(model(x), y).backward()  # the oracle: one process, the whole batch
        tokens = _model()
        x, y, mask, _ = _tokens(n)
        _token_loss(tokens, x, y, mask).backward()
        for rank in (0, 1):
            for name, oracle in ((f"rank{rank}-n{n}", model), (f"rank{rank}-t{n}", tokens)):
                got = load_file(str(tmp_path / f"{name}.safetensors"))
                for k, p in oracle.named_parameters():
                    torch.testing.assert_close(got[k], p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, name=name, k=k: f"{name} {k}: {m}")


def _train(bot: Path, out: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "ui.cli", "train", str(bot), "-o", str(out), "-q", "--device", "cpu",
                           *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "candor.json").read_text())


def test_two_processes_train_a_comparable_model(tmp_path):
    bot = tmp_path / "tiny.yaml"
    bot.write_text(yaml.safe_dump(tiny_bot_dict(epochs=10, patience=100), sort_keys=False))
    one, two = _train(bot, tmp_path / "one"), _train(bot, tmp_path / "two", "--nproc", "2")
    assert one["training"]["processes"] == 1 and two["training"]["processes"] == 2
    assert two["training"]["steps"] == one["training"]["steps"]  # the same global batches
    acc1, acc2 = one["training"]["val_accuracy"], two["training"]["val_accuracy"]
    assert acc2 >= 0.75 and abs(acc1 - acc2) <= 0.25, (acc1, acc2)
    assert not (tmp_path / "two.checkpoints").exists()


def test_two_dp_processes_spend_the_same_epsilon_as_one(tmp_path):
    from opacus.accountants import PRVAccountant

    path = dp_bot_file(tmp_path)
    cards = [_train(path, tmp_path / "one")["privacy"], _train(path, tmp_path / "two", "--nproc", "2")["privacy"]]
    assert [c["processes"] for c in cards] == [1, 2]
    for p in cards:  # each run's ε is the accountant's for its own (noise, global sample rate, steps)
        acc = PRVAccountant()
        acc.history = [(p["noise_multiplier"], p["sample_rate"], p["steps"])]
        assert p["epsilon_sgd"] == pytest.approx(acc.get_epsilon(p["delta"]), rel=1e-9)
        assert round(1 / p["sample_rate"]) == max(1, round(p["records_noisy"] / 16))  # the logical batch is global
        assert p["steps"] == 3 * round(1 / p["sample_rate"])
        assert 7.0 < p["epsilon"] <= 8.0 + 1e-9
    assert cards[0]["epsilon"] == pytest.approx(cards[1]["epsilon"], abs=0.05)


def _dp_rank(rank: int, world: int, port: int, bot: str, out: str) -> None:
    """One DP step of the real trainer with a zero loss: the step is the noise alone."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    from bot import distributed
    from bot.spec import load_bot
    from bot.train import Trainer
    from safety.privacy import per_record_loss

    spec, _ = load_bot(Path(bot))
    trainer = Trainer(spec, Path(out) / "m", device="cpu", progress=False, log=lambda *a: None)
    dp = trainer.privacy
    trainer._setup(resume=False)
    trainer.state.stage = "finetune"
    trainer._finetuned_model()
    trainer.opt = trainer._optimizer()
    dp.start(trainer)
    seen = {}
    trainer.opt.original_optimizer.step = lambda *a, **k: seen.update(
        {n: p.grad.detach().clone().contiguous() for n, p in trainer.model.named_parameters() if p.grad is not None})
    b, pos, y = dp.batch(trainer, list(range(rank, 12, world)))  # some records on every rank
    DPTensorFastGradientClipping(dp.dp_model, trainer.opt, per_record_loss(dp.dp_model, b, pos, y, 0.5) * 0.0,
                                 "mean").backward()
    trainer.opt.step()
    save_file(seen, f"{out}/noise{rank}.safetensors")
    batch = max(1, round(dp.n_noisy / round(1 / dp.sample_rate)))  # the public expected logical batch
    (Path(out) / f"meta{rank}.json").write_text(json.dumps(
        {"sigma": trainer.opt.noise_multiplier, "clip": spec.privacy.max_grad_norm, "batch": batch}))
    distributed.finish()


def test_two_dp_processes_add_the_noise_once_with_the_stated_std(tmp_path):
    path = dp_bot_file(tmp_path, physical_batch=16)
    torch.multiprocessing.spawn(_dp_rank, args=(2, free_port(), str(path), str(tmp_path)), nprocs=2)
    meta = json.loads((tmp_path / "meta0.json").read_text())
    assert meta == json.loads((tmp_path / "meta1.json").read_text())
    a, b = load_file(str(tmp_path / "noise0.safetensors")), load_file(str(tmp_path / "noise1.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k])  # the same step on both ranks: one noise draw, all-reduced
    noise = torch.cat([v.reshape(-1) for v in a.values()])
    expected = meta["sigma"] * meta["clip"] / meta["batch"]  # σC / B: noise added once, not once per rank
    assert 0.95 * expected < float(noise.std()) < 1.05 * expected, (float(noise.std()), expected)
    assert abs(float(noise.mean())) < 0.05 * expected
