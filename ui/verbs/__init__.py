"""The `candor` verbs, one module each (as litgpt's): `add_arguments(parser)` declares the verb's own arguments and
`run(args)` does it. ui/cli.py lists the modules and dispatches; what several verbs share is here."""
from __future__ import annotations

import argparse

DEFAULT_MODEL = "models/support_demo"


def add_model(parser: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL, help: str | None = None) -> None:
    """The MODEL positional every verb that reads a trained model takes first."""
    parser.add_argument("model", nargs="?", default=default, metavar="MODEL",
                        help=help or f"model directory (default: {DEFAULT_MODEL})")


def count(value: str) -> int:
    """argparse type: a whole number, 0 or above."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or above, got {n}")
    return n
