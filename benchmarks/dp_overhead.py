"""DP-SGD overhead: the same model, data and batch trained with and without DP in one run.

Each mode runs in its own process (so peak memory is its own): step time (median after warm-up)
and peak memory above the model's resting footprint (CPU: RSS; CUDA: max_memory_allocated).
The loss is Candor's per-record objective (intent CE + 0.5 × reply-token CE) in every mode. DP modes:
`dp` is what Candor trains with (safety/bookkeeping.py: per-record clipping in one backward pass),
`dp-opacus` is Opacus' own two-pass ghost clipping (what Candor used before, and still uses under DPDDP).
`--profile` adds a torch.profiler table of where each mode's time goes.

    python benchmarks/dp_overhead.py                      # the default model on CPU
    python benchmarks/dp_overhead.py --size gpt2-124m --device cuda --batch 32
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel

SIZES = {"default": dict(n_layer=4, n_head=4, n_embd=256, vocab_size=4096),
         "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)}


MODES = ("plain", "dp", "dp-opacus")
LABELS = {"plain": "plain", "dp": "DP-SGD, Candor (book-keeping ghost clipping: one backward)",
          "dp-opacus": "DP-SGD, Opacus ghost clipping (two backward passes)"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def run_mode(args) -> dict:
    from bot.model import DialogueModel
    from safety.gpt2_dp import conv1d_to_linear, position_ids, untie

    torch.manual_seed(0)
    dev = torch.device(args.device)
    cfg = GPT2Config(n_positions=max(128, args.seq), **SIZES[args.size])
    model = DialogueModel(GPT2LMHeadModel(cfg), [f"i{k}" for k in range(27)]).to(dev)
    if args.mode != "plain":
        conv1d_to_linear(model.lm)
        untie(model.lm)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=dev)
    mask = torch.ones_like(ids)
    pos = torch.full((args.batch,), args.seq // 4, device=dev)
    y = torch.randint(0, 27, (args.batch,), device=dev)
    labels = ids.clone()
    labels[:, : args.seq // 4 + 1] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    net, bk = model, None
    if args.mode != "plain":
        from opacus import PrivacyEngine
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
        loader = DataLoader(TensorDataset(torch.arange(args.batch)), batch_size=args.batch)
        net, opt, _, _ = PrivacyEngine().make_private(
            module=model, optimizer=opt, data_loader=loader, criterion=torch.nn.CrossEntropyLoss(),
            noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ghost", poisson_sampling=False)
        if args.mode == "dp":
            from safety.bookkeeping import BookKeeping
            net.remove_hooks()
            bk = BookKeeping(model, 1.0)

    def per_record():
        intent, logits = net(ids, mask, position_ids(mask), pos)
        ce = torch.nn.functional.cross_entropy(intent, y, reduction="none")
        tok = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                reduction="none", ignore_index=-100).view(args.batch, -1)
        return ce + 0.5 * tok.sum(1) / (labels[:, 1:] != -100).sum(1)

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        rest = torch.cuda.memory_allocated() / 2**20
    else:
        rest = _rss_mb()
    def step():
        if bk:
            with bk.recording():
                loss = per_record()
            bk.backward(loss)
        else:
            loss = per_record()
            if args.mode == "dp-opacus":
                DPTensorFastGradientClipping(net, opt, loss, "mean").backward()
            else:
                loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for k in range(args.warmup + args.steps):
        start = time.perf_counter()
        step()
        if k >= args.warmup:
            times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = ""
    if args.profile:  # after the peak is taken: the profiler's own memory is not the step's
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return {"mode": args.mode, "step_s": statistics.median(times), "peak_mb": peak - rest,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "profile": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="also print where each mode's time goes (3 steps)")
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    rows = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], capture_output=True, text=True,
                             check=True)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.size} ({rows['plain']['params_m']:.1f}M params), batch {args.batch}, seq {args.seq}, {where}; "
          f"median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| mode | step (ms) | samples/s | peak memory above rest (MiB) |\n|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {LABELS[mode]} | {1000 * r['step_s']:.0f} | {args.batch / r['step_s']:.0f} | {r['peak_mb']:.0f} |")
    for mode in ("dp", "dp-opacus"):
        t = rows[mode]["step_s"] / rows["plain"]["step_s"]
        m = rows[mode]["peak_mb"] / max(rows["plain"]["peak_mb"], 1e-9)
        print(f"\n{mode} / plain: time {t:.2f}x, peak memory {m:.2f}x (target ≤ 1.3x each)")
    if args.profile:
        for mode, r in rows.items():
            print(f"\n### {LABELS[mode]}: self CPU time by operator (3 steps)\n{r['profile']}")


if __name__ == "__main__":
    main()
