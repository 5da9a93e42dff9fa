"""`candor` — every verb is a plain module under ui/verbs/: `add_arguments(parser)` and `run(args)`.

A verb's module is imported only when its arguments are needed (its own verb, or every verb for `parser()`), so
`candor redact` or `candor --help` does not load PyTorch."""
from __future__ import annotations

import argparse
import importlib
import sys

from bot.io import ModelFileError
from bot.spec import BotFileError

# (verb, module under ui/verbs/, one line for `candor --help`)
VERBS = (
    ("train", "train", "train a bot (the bundled demo bot by default)"),
    ("eval", "evaluate", "write intent reports for a trained model"),
    ("redact", "redact", "show what would be stored of a message: PII replaced by <TYPE> placeholders"),
    ("chat", "chat", "chat with a trained model in the terminal"),
    ("explain", "explain", "which words made the bot choose its intent (Captum integrated gradients)"),
    ("serve", "serve", "the web app: chat, audit log and model card (trains the demo bot if needed)"),
    ("attack", "attack", "attack the served bot with TextAttack recipes; robustness report"),
    ("privacy", "privacy", "the privacy guarantee of a trained model"),
    ("audit", "audit", "attack the privacy of a bot: canary exposure, membership inference"),
    ("pretrain-public", "pretrain", "build a public base model once (public labelled text only) for `--base`; "
                                    "multi-task: LM + each source's own intents"),
    ("data", "data", "validate or import bot data"),
)


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """Every verb with its arguments, or (`verb`) only that verb's arguments, every verb listed by name."""
    p = argparse.ArgumentParser(prog="candor", description="Train, evaluate and chat with a Candor support bot.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, module_name, summary in VERBS:
        v = sub.add_parser(name, help=summary, description=summary)
        if verb is None or verb == name:
            module = importlib.import_module(f"ui.verbs.{module_name}")
            module.add_arguments(v)
            v.set_defaults(run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(next((a for a in argv if not a.startswith("-")), "")).parse_args(argv)  # "": no verb named
    args.argv = argv  # as given (train --nproc runs it again under torchrun)
    try:
        return args.run(args)
    except BotFileError as e:
        print(e, file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"candor: {e}", file=sys.stderr)
        return 1
    except ModelFileError as e:
        print(f"candor: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
