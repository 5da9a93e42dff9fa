"""Privacy audits of the demo bot: canary exposure and membership inference, without DP and at ε = 8.

Runs `candor audit canaries` (trains the bot twice with random secrets planted 1, 4 and 16 times, plus
never-planted controls: once without DP, once with DP-SGD at the target ε) and then `candor audit
membership` on both models — the same code as the CLI — and prints one table; writes
benchmarks/out/audits/<bot>/{canaries.json,canaries.png,membership_roc.png,summary.json}.

    python benchmarks/privacy_audits.py                      # the demo bot, ε = 8
    python benchmarks/privacy_audits.py --bot my.yaml --epsilon 3
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bot.spec import demo_bot_path
from ui.cli import main as candor
from ui.verbs.audit import CANARIES_JSON, MEMBERSHIP_JSON, plot_roc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bot", default=str(demo_bot_path()))
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--per-level", type=int, default=2)
    p.add_argument("--candidates", type=int, default=5000)
    p.add_argument("-n", type=int, default=1000, help="members and non-members scored (each)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    out = args.out or Path("benchmarks/out/audits") / Path(args.bot).stem
    t0 = time.time()
    assert candor(["audit", "canaries", args.bot, "--epsilon", str(args.epsilon), "--per-level", str(args.per_level),
                   "--candidates", str(args.candidates), "-o", str(out)]) == 0
    canary_seconds = time.time() - t0
    report = json.loads((out / CANARIES_JSON).read_text())
    rows, results = [], []
    for run in report["runs"]:
        t1 = time.time()
        assert candor(["audit", "membership", run["model"], "-n", str(args.n)]) == 0
        m = json.loads((Path(run["model"]) / "reports" / MEMBERSHIP_JSON).read_text())
        results.append(m)
        by = {}
        for c in run["canaries"]:
            by.setdefault(c["repeats"], []).append(c["exposure"])
        rows.append({"mode": run["mode"], "epsilon": run["epsilon"], "val_accuracy": run["val_accuracy"],
                     "train_seconds": run["seconds"], "max_exposure": {r: max(v) for r, v in sorted(by.items())},
                     "auc": m["auc"], "tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"], "members": m["members"],
                     "membership_seconds": round(time.time() - t1, 1)})
    plot_roc(results, out / "membership_roc.png")
    total = time.time() - t0
    levels = sorted({r for row in rows for r in row["max_exposure"]})
    head = ("| training | ε | val acc | " + " | ".join(f"max exposure {'controls' if r == 0 else f'{r}x'}" for r in levels)
            + " | membership AUC | TPR @ 1% FPR | train s |")
    lines = [head, "|" + "---|" * (6 + len(levels))]
    for row in rows:
        eps = "∞ (no DP)" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        lines.append(f"| {row['mode']} | {eps} | {row['val_accuracy']:.3f} | "
                     + " | ".join(f"{row['max_exposure'][r]:.2f}" for r in levels)
                     + f" | {row['auc']:.3f} | {row['tpr_at_1pct_fpr']:.3f} | {row['train_seconds']:.0f} |")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{platform.node()}, {device}; {report['space_bits']:.1f}-bit secrets, {args.per_level} canaries per "
          f"repeat count, {args.candidates} random candidates; membership on {rows[0]['members']} + "
          f"{rows[0]['members']} utterances")
    print("\n".join(lines))
    print(f"\ncanary audit {canary_seconds / 60:.1f} min, both audits {total / 60:.1f} min in all")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "seconds": total, "canary_seconds": canary_seconds},
                                                 indent=2))
    print(f"wrote {out}/canaries.png, {out}/membership_roc.png, {out}/summary.json")


if __name__ == "__main__":
    main()
