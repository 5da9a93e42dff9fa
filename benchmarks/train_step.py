"""Fine-tuning speed on BANKING77: seconds per 32-row step of the real training loop, side by side in one run,
for the training settings that change the speed and not the recipe (precision, GELU kernel, AdamW kernel),
with and without R-drop.

    python benchmarks/train_step.py [--rows 1600] [--repeats 3]

Each configuration trains the same freshly built model (same seed) on the same `--rows` training rows; the
configurations take turns, `--repeats` rounds, and the table shows the median of the rounds (the machine is
noisy). Speed-up is against the first row, the settings before 2026-11-25.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers.activations import ACT2FN

from bot import model as models
from bot.importers import from_banking77
from bot.train import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
# (precision, GELU, fused AdamW): the settings before 2026-11-25 first, then one change at a time, then all
CONFIGS = [("fp32", "gelu_new", False), ("fp32", "gelu_pytorch_tanh", False), ("fp32", "gelu_new", True),
           ("bf16", "gelu_new", False), ("fp32", "gelu_pytorch_tanh", True), ("bf16", "gelu_pytorch_tanh", True)]


def epoch_seconds(t: Trainer, precision: str, gelu: str, fused: bool, rdrop: float) -> float:
    torch.manual_seed(0)
    t.model = models.build(t.spec.model, t.tok, list(t.spec.intents)).to(t.device)
    for block in t.model.lm.transformer.h:
        block.mlp.act = ACT2FN[gelu]
    t.model.train()
    t.opt = torch.optim.AdamW(t.model.parameters(), lr=t.training.learning_rate, weight_decay=0.01, fused=fused,
                              foreach=False if not fused else None)
    t.precision, t.training.rdrop = precision, rdrop
    t.state.batch, t.state.epoch, t.state.step, t.state.stage_start = 0, 0, 0, 0
    start = time.perf_counter()
    t._finetune_epoch()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--rows", type=int, default=1600, help="training rows per timed epoch (50 steps of 32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/train_step"))
    args = p.parse_args()

    spec = from_banking77(args.data)
    spec.model.max_length = 128
    spec.training.outlier_weight, spec.training.checkpoint_every = 0, 0
    t = Trainer(spec, args.out, device="cpu", progress=False, log=lambda *a: None)  # the loop AdamW: CPU's old default
    t._setup(resume=False)
    t.state.stage = "finetune"
    t.train_records = t.train_records[:args.rows]
    steps = -(-len(t.train_records) // spec.training.batch_size)
    runs = [(c, rdrop) for rdrop in (0.0, 1.0) for c in CONFIGS]
    times: dict = {r: [] for r in runs}
    epoch_seconds(t, *CONFIGS[0], 0.0)  # warm-up
    for _ in range(args.repeats):
        for (precision, gelu, fused), rdrop in runs:
            times[((precision, gelu, fused), rdrop)].append(epoch_seconds(t, precision, gelu, fused, rdrop))

    print(f"\nBANKING77, {len(t.train_records)} rows ({steps} steps of {spec.training.batch_size}) per timing, median "
          f"of {args.repeats}; {platform.node()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| R-drop | precision | GELU | AdamW | ms per step | speed-up |\n|---|---|---|---|---|---|")
    for rdrop in (0.0, 1.0):
        first = statistics.median(times[(CONFIGS[0], rdrop)])
        for c in CONFIGS:
            m = statistics.median(times[(c, rdrop)])
            print(f"| {'on' if rdrop else 'off'} | {c[0]} | {c[1]} | {'fused' if c[2] else 'loop'} | "
                  f"{1000 * m / steps:.0f} | {first / m:.2f}x |")


if __name__ == "__main__":
    main()
