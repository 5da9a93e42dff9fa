"""`candor pretrain-public OUT --source KIND:PATH ...`: a public base model for `model.base` (bot/pretrain.py)."""
from __future__ import annotations

from bot.pretrain import parse_source, pretrain_public


def pretrain(args) -> int:
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
