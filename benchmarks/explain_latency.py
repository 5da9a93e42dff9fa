"""Latency of one intent explanation (p50/p95) and the faithfulness table, on a trained bot.

    candor train                                  # once: the demo bot into models/support_demo
    python benchmarks/explain_latency.py [--model models/support_demo] [--n 200] [--steps 32]
    python benchmarks/explain_latency.py --baselines mean pad zero --steps 32   # faithfulness by baseline
    python benchmarks/explain_latency.py --after-previous      # each text read after the one before (latency only)
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from bot.dialogue import Bot
from bot.spec import OUT_OF_SCOPE, load_bot
from explain import faithfulness
from explain.attribution import BASELINES, DEFAULT_BASELINE, IntentExplainer
from ui.verbs.evaluate import bot_file_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/support_demo")
    p.add_argument("--n", type=int, default=200, help="test texts to explain")
    p.add_argument("--steps", type=int, nargs="+", default=[16, 32], help="integration steps to compare")
    p.add_argument("--device", default="cpu")
    p.add_argument("--baselines", nargs="+", default=[DEFAULT_BASELINE], choices=list(BASELINES),
                   help="integrated-gradients baselines: the first is timed; with more, a faithfulness row for each")
    p.add_argument("--after-previous", action="store_true",
                   help="explain each text as read after the previous test text (a follow-up turn: the classifier "
                        "reads one earlier user turn); latency only, as the faithfulness measures remove words of the "
                        "message alone")
    args = p.parse_args()

    bot = Bot(args.model, device=args.device)
    spec, _ = load_bot(bot_file_for(bot.card, None))
    texts = [e.text for e in spec.test if e.intent != OUT_OF_SCOPE][: args.n]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    params = sum(q.numel() for q in bot.model.parameters()) / 1e6
    print(f"{args.model}: {params:.1f}M params; {len(texts)} test texts; {platform.node()} {where}\n")
    print("| steps | p50 ms | p95 ms | mean convergence delta | max delta |\n|---|---|---|---|---|")
    for steps in args.steps:
        ex = IntentExplainer(bot.model, bot.enc, n_steps=steps, internal_batch_size=steps, baseline=args.baselines[0])
        earlier = [[texts[k - 1]] if args.after_previous and k else [] for k in range(len(texts))]
        for t in texts[:5]:
            ex.explain(t)  # warm-up
        times, explanations = [], []
        for t, c in zip(texts, earlier):
            start = time.perf_counter()
            explanations.append(ex.explain(t, context=c))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - start))
        q = statistics.quantiles(times, n=20)
        deltas = [e.delta for e in explanations]
        print(f"| {steps} | {statistics.median(times):.1f} | {q[18]:.1f} | {statistics.mean(deltas):.1e} | {max(deltas):.1e} |")
    if args.after_previous:
        return
    print(f"\nFaithfulness ({steps} steps, baseline: {BASELINES[args.baselines[0]]}):\n")
    print(faithfulness.table(faithfulness.evaluate(bot.model, bot.enc, explanations)))
    if len(args.baselines) > 1:
        print(f"\nBy baseline ({steps} steps, the same {len(texts)} texts; random words: comprehensiveness of 20% "
              "of the words drawn at random, 5 draws):\n")
        print("| baseline | mean F(baseline) | mean convergence delta | comp AOPC | suff AOPC | comp@20% | "
              "comp@20% / random |\n|---|---|---|---|---|---|---|")
        for name in args.baselines:
            ex = IntentExplainer(bot.model, bot.enc, n_steps=steps, internal_batch_size=steps, baseline=name)
            es = [ex.explain(t) for t in texts]
            r = faithfulness.evaluate(bot.model, bot.enc, es)
            a, rnd = r["attributed"], r["random"]
            print(f"| {BASELINES[name]} | {statistics.mean(e.baseline_probability for e in es):.3f} | "
                  f"{statistics.mean(e.delta for e in es):.1e} | {a['comprehensiveness_aopc']:.3f} | "
                  f"{a['sufficiency_aopc']:.3f} | {a['comprehensiveness'][0.2]:.3f} | "
                  f"{a['comprehensiveness'][0.2] / rnd['comprehensiveness'][0.2]:.1f}x |")


if __name__ == "__main__":
    main()
