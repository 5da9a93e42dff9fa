"""`candor pretrain-public OUT --source KIND:PATH ...`: a public base model for `model.base` (bot/pretrain.py)."""
from __future__ import annotations

from bot.pretrain import parse_source, pretrain_public


def add_arguments(p) -> None:
    p.add_argument("out", help="directory to write the base model to")
    p.add_argument("--source", action="append", default=[], metavar="KIND:PATH",
                   help="public labelled data, repeatable: sgd:FILE (Schema-Guided Dialogue user turns CSV; train "
                        "and dev splits), banking77:DIR (its train.csv), csv:FILE (text,intent columns)")
    p.add_argument("--epochs", type=int, default=3, help="multi-task intent epochs (default 3)")
    p.add_argument("--pretrain-epochs", type=int, default=1, help="LM pre-training epochs before them (default 1)")
    p.add_argument("--max-per-label", type=int, default=1500, help="at most this many texts per label (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    if not args.source:
        raise SystemExit("candor pretrain-public: name at least one public source, e.g. "
                         "--source sgd:../shared/data/sgd_user_turns/sgd_user_turns.csv.gz")
    try:
        sources = [parse_source(s) for s in args.source]
        out = pretrain_public(sources, args.out, max_per_label=args.max_per_label, device=args.device,
                              training={"epochs": args.epochs, "pretrain_epochs": args.pretrain_epochs,
                                        "seed": args.seed}, progress=not args.quiet)
    except ValueError as e:
        raise SystemExit(f"candor pretrain-public: {e}") from None
    print(f"wrote {out}: a public base; fine-tune a bot from it with `candor train BOT.yaml --base {out}` "
          f"(or `model: {{base: {out}}}` in the bot file)")
    return 0
