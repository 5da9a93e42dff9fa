"""`candor audit canaries BOT.yaml` and `candor audit membership MODEL`: privacy shown by attack."""
from __future__ import annotations

import copy
import time
from pathlib import Path

from bot import card as cards
from bot.io import atomic_write_json
from bot.spec import OUT_OF_SCOPE, load_bot, normalize
from ui.verbs import add_model

MEMBERSHIP_JSON, MEMBERSHIP_PNG = "membership.json", "membership.png"
CANARIES_JSON, CANARIES_PNG = "canaries.json", "canaries.png"


def add_arguments(p) -> None:
    audits = p.add_subparsers(dest="audit_verb", required=True, metavar="AUDIT")
    ca = audits.add_parser("canaries", help="plant random secrets, train with and without DP, measure their exposure")
    ca.add_argument("bot", help="bot YAML to train from")
    ca.add_argument("--repeats", default="0,1,4,16",
                    help="times each canary is planted; 0: controls, never planted (default 0,1,4,16)")
    ca.add_argument("--per-level", type=int, default=2, help="canaries per repeat count (default 2)")
    ca.add_argument("--digits", type=int, default=7, help="digits in each secret (default 7: 10^7 possible)")
    ca.add_argument("--candidates", type=int, default=5000, help="random secrets to rank against (default 5000)")
    ca.add_argument("--modes", default="plain,dp", help="trainings to audit: plain, dp or both (default plain,dp)")
    ca.add_argument("--epsilon", type=float, default=8.0, help="target ε of the DP training (default 8)")
    ca.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the bot file's)")
    ca.add_argument("--intent", help="intent the canary records are labelled with (default: the first)")
    ca.add_argument("-o", "--out", help="folder for the report and the two models (default audits/BOT-canaries)")
    ca.add_argument("--card", help="model directory whose card gets the result")
    ca.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    me = audits.add_parser("membership", help="loss-threshold membership inference on a trained model")
    add_model(me)
    me.add_argument("--bot", help="the bot file it was trained from (default: the one named in its card)")
    me.add_argument("-n", type=int, default=1000, help="members and non-members scored, each (default 1000)")
    me.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    return canaries(args) if args.audit_verb == "canaries" else membership(args)


# ---------------------------------------------------------------- canaries
def canaries(args) -> int:
    from bot import model as models
    from bot.data import Encoder
    from bot.train import Trainer
    from safety import canaries as can
    from safety.guard import served_text

    modes = args.modes.split(",")
    if not modes or set(modes) - {"plain", "dp"}:
        raise SystemExit(f"candor audit canaries: --modes takes plain, dp or plain,dp; got '{args.modes}'")
    try:
        repeats = [int(x) for x in args.repeats.split(",")]
    except ValueError:
        raise SystemExit(f"candor audit canaries: --repeats takes whole numbers, e.g. 0,1,4,16; got '{args.repeats}'")
    if min(repeats) < 0 or args.digits < 1 or args.per_level < 1 or args.candidates < 50:
        raise SystemExit("candor audit canaries: --repeats ≥ 0, --digits ≥ 1, --per-level ≥ 1, --candidates ≥ 50")
    spec, _ = load_bot(args.bot)
    if "dp" in modes and not spec.privacy.count_epsilon < args.epsilon:
        raise SystemExit(f"candor audit canaries: --epsilon must be above privacy.count_epsilon "
                         f"({spec.privacy.count_epsilon})")
    planted_in = args.intent or next(iter(spec.intents))
    if planted_in not in spec.intents:
        raise SystemExit(f"candor audit canaries: no intent '{planted_in}' in {args.bot}")
    secrets_ = can.make(repeats, args.per_level, args.digits)
    out = Path(args.out or f"audits/{spec.name}-canaries")
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for mode in modes:
        s = copy.deepcopy(spec)
        s.training.checkpoint_every = 0
        if args.epochs:
            s.training.epochs = args.epochs
        if s.training.reply_weight <= 0:
            s.training.reply_weight = 0.5  # the canaries live in the reply model
        s.privacy.enabled = mode == "dp"
        if mode == "dp":
            s.privacy.target_epsilon = args.epsilon
        print(f"\n== training with canaries planted {', '.join(f'{r}x' for r in repeats if r)} "
              f"({sum(1 for c in secrets_ if c.repeats)} canaries, {sum(1 for c in secrets_ if not c.repeats)} controls): "
              f"{'DP-SGD at target ε ' + str(args.epsilon) if mode == 'dp' else 'no DP'} ==", flush=True)
        t0 = time.time()
        trainer = Trainer(  # DP-SGD when s.privacy.enabled
            s, out / mode, progress=not args.quiet, read=served_text, extra_records=can.planted(secrets_, planted_in),
            log=(lambda *a: None) if args.quiet else print)
        model_dir = trainer.run()
        model, tok = models.load(model_dir)
        card = models.read_card(model_dir)
        results = can.measure(model, Encoder(tok, s.model.max_length), secrets_, planted_in, args.digits,
                              args.candidates, s.settings.max_reply_tokens)
        runs.append({"mode": mode, "model": str(model_dir), "seconds": round(time.time() - t0, 1),
                     "epsilon": (card.get("privacy") or {}).get("epsilon"),
                     "val_accuracy": card["training"].get("val_accuracy"), "canaries": results})
        report = {"audit": "canary exposure (Carlini et al. 2019)", "bot": spec.name, "source": str(args.bot),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "digits": args.digits,
                  "space_bits": can.space_bits(args.digits), "candidates": args.candidates,
                  "intent": planted_in, "format": can.REPLY, "runs": runs}
        atomic_write_json(out / CANARIES_JSON, report)  # after every training: an interrupted audit keeps its results
    plot_canaries(report, out / CANARIES_PNG)
    print("\n" + canary_table(report))
    print(f"\nwrote {out / CANARIES_JSON} and {out / CANARIES_PNG}; the models are in {out}/")
    if args.card:
        cards.update(args.card, audits={**(models.read_card(args.card).get("audits") or {}),
                                        "canaries": cards.canary_summary(report)})
        print(f"added the result to the model card of {args.card}")
    return 0


def canary_table(report: dict) -> str:
    rows = ["| training | ε | repeats | secret | log-perplexity | rank among sampled | exposure (bits) |",
            "|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        eps = "∞ (no DP)" if run["epsilon"] is None else f"{run['epsilon']:.2f}"
        for c in run["canaries"]:
            rows.append(f"| {run['mode']} | {eps} | {c['repeats'] or '0 (control)'} | {c['secret']} | {c['nll']:.2f} | "
                        f"{c['rank']} of {c['of']} | {c['exposure']:.2f} |")
    return "\n".join(rows) + (f"\n\nExposure: log2 of {10 ** report['digits']:,} possible secrets "
                              f"({report['space_bits']:.1f} bits) minus log2 of the canary's estimated rank "
                              "(skew-normal fit to random secrets). A never-seen secret (the controls) scores "
                              "about 1.4 bits on average, above 2 bits one time in four.")


def plot_canaries(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    levels = sorted({c["repeats"] for run in report["runs"] for c in run["canaries"]})
    for k, run in enumerate(report["runs"]):
        label = "no DP" if run["epsilon"] is None else f"DP, ε = {run['epsilon']:.2f}"
        for i, r in enumerate(levels):
            ys = [c["exposure"] for c in run["canaries"] if c["repeats"] == r]
            ax.scatter([i + (k - 0.5) * 0.25] * len(ys), ys, color=f"C{k}", label=label if i == 0 else None, s=40)
    ax.axhline(report["space_bits"], color="grey", ls=":", lw=1, label="fully memorised")
    ax.axhline(2, color="black", ls="--", lw=1, label="2 bits")
    ax.set_xticks(range(len(levels)), [f"{r}x" if r else "never\n(control)" for r in levels])
    ax.set_xlabel("times each canary was in the training data")
    ax.set_ylabel("exposure (bits)")
    ax.set_title(f"{report['bot']}: canary exposure")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- membership
def membership(args) -> int:
    from bot import model as models
    from bot import neighbours
    from bot.data import Encoder
    from bot.train import training_split
    from safety.guard import served_text
    from safety.membership import attack

    card = models.read_card(args.model)
    if not card:
        raise FileNotFoundError(f"{args.model}: no candor.json here; is this a Candor model directory?")
    source = args.bot or card["bot"].get("source_file")
    if not source or not Path(source).is_file():
        raise SystemExit(f"candor audit membership: the bot file the model was trained from ({source}) is not here; "
                         "pass it with --bot")
    spec, _ = load_bot(source)
    spec.training.seed = card["training"].get("seed", spec.training.seed)
    dp = bool((card.get("privacy") or {}).get("dp"))
    members, held = training_split(spec, served_text, per_record=dp)
    seen = {normalize(r.text) for r in members}
    non_members = held + [r for r in (copy.copy(e) for e in spec.test) if r.intent != OUT_OF_SCOPE]
    for r in non_members:
        r.text = served_text(r.text)
    non_members = [r for r in non_members if normalize(r.text) not in seen and r.intent in spec.intents]
    model, tok = models.load(args.model)
    result = attack(model, Encoder(tok, card["model"]["max_length"]), members, non_members, args.n, args.seed,
                    neighbours=neighbours.load(args.model))
    result.update({"model": str(args.model), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "epsilon": (card.get("privacy") or {}).get("epsilon")})
    reports = Path(args.model) / "reports"
    reports.mkdir(exist_ok=True)
    atomic_write_json(reports / MEMBERSHIP_JSON, result)
    plot_roc([result], reports / MEMBERSHIP_PNG)
    cards.update(args.model, audits={**(card.get("audits") or {}), "membership": cards.membership_summary(result, dp)})
    print(f"membership inference ({result['attack']}) on {args.model}: {result['members']} training records vs "
          f"{result['non_members']} held-out")
    print(f"  AUC {result['auc']:.3f} (0.5 = a coin toss), TPR at 1% FPR {result['tpr_at_1pct_fpr']:.3f}, "
          f"at 10% FPR {result['tpr_at_10pct_fpr']:.3f}; mean loss {result['mean_loss_members']:.3f} (members) vs "
          f"{result['mean_loss_non_members']:.3f}")
    if "distance" in result:
        d = result["distance"]
        print(f"  by the distance rule's distance (shown to every user): AUC {d['auc']:.3f}, TPR at 1% FPR "
              f"{d['tpr_at_1pct_fpr']:.3f}, at 10% FPR {d['tpr_at_10pct_fpr']:.3f}")
    print(f"  wrote {reports / MEMBERSHIP_JSON} and {reports / MEMBERSHIP_PNG}; added to the model card")
    return 0


def plot_roc(results: list[dict], path: Path, labels: list[str] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for k, r in enumerate(results):
        label = (labels[k] if labels else "") or ("no DP" if r.get("epsilon") is None else f"DP, ε = {r['epsilon']:.2f}")
        ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], color=f"C{k}", label=f"{label} (AUC {r['auc']:.3f})")
        if "distance" in r:
            d = r["distance"]
            ax.plot(d["roc"]["fpr"], d["roc"]["tpr"], color=f"C{k}", ls="--",
                    label=f"{label}, by distance (AUC {d['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("membership inference (loss threshold" + (", distance" if any("distance" in r for r in results)
                                                            else "") + ")")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
