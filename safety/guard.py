"""Guard the input of a chat turn: what the bot will not read at all, and how it reads the rest."""
from __future__ import annotations

import sys
import unicodedata

MAX_CHARS = 1000


class Rejected(ValueError):
    """A message the bot refuses; the text says why, for the user."""


def guard(text: str, max_chars: int = MAX_CHARS) -> str:
    """Normalise (NFKC; invisible format characters such as zero-width spaces dropped, so that they cannot split a
    word; other control characters made spaces; whitespace collapsed) and enforce the length cap."""
    if not isinstance(text, str):
        raise Rejected("a message must be text")
    text = unicodedata.normalize("NFKC", text)
    text = "".join("" if (cat := unicodedata.category(c)) == "Cf" else " " if cat[0] == "C" else c for c in text)
    text = " ".join(text.split())
    if not text:
        raise Rejected("the message is empty")
    if len(text) > max_chars:
        raise Rejected(f"the message is {len(text)} characters long; the limit is {max_chars}")
    return text


def read_message(message: str, max_chars: int = MAX_CHARS):
    """The input path of every turn, the `read` of bot/turn.py: guard, redact, then correct misspelt words
    (safety/spelling.py). The web app and its API
    (ui/service.py), `candor chat`, `candor explain` and `candor attack` (safety/attacks.py) all read a message
    here, so an explanation is of the decision the served bot makes, and whatever defence sits in this path is
    measured by the attacks. Returns the `safety.pii.Redaction` whose `.text` (the served text) is what the model,
    the explanation and the audit log see, and `.found` the entity types replaced."""
    from safety.pii import UNCHECKED, mark_read, redact
    from safety.spelling import correct

    r = redact(guard(message, max_chars))
    if r.found == [UNCHECKED]:
        raise Rejected("the message could not be checked for personal data in time; please shorten or rephrase it")
    r.text = correct(r.text)  # after redaction: placeholders are left alone, and no raw value is ever "corrected"
    mark_read(r.text)
    return r


def served_text(text: str, redact: bool = True) -> str:
    """`text` as a served turn reads it (normalised, PII redacted, misspellings corrected), for training and
    evaluation: the model learns and is measured on what it will see. No length cap (a long training text is kept);
    a text with nothing left after normalisation is returned unchanged. `redact=False` only normalises (to measure
    what redaction costs)."""
    from safety.pii import redact_text
    from safety.spelling import correct

    try:
        text = guard(text, max_chars=sys.maxsize)
    except Rejected:
        return text  # nothing left after normalisation
    return correct(redact_text(text)) if redact else text  # a text too slow to check becomes "<UNCHECKED>"
