"""`candor privacy report [MODEL_DIR]`"""
from __future__ import annotations

from safety.privacy import report as privacy_report


def report(args) -> int:
    print(privacy_report(args.model))
    return 0
