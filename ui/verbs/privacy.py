"""`candor privacy report [MODEL]`"""
from __future__ import annotations

from safety.privacy import report as privacy_report
from ui.verbs import add_model


def add_arguments(p) -> None:
    actions = p.add_subparsers(dest="privacy_verb", required=True, metavar="ACTION")
    add_model(actions.add_parser("report", help="print the (ε, δ) guarantee in plain words"))


def run(args) -> int:  # the one action: report
    print(privacy_report(args.model))
    return 0
