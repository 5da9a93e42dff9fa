"""The learned PII recognizer: person names, street addresses and postal blocks, dates of birth in free form — what
rules cannot pin down. A small spaCy pipeline (tok2vec + ner) trained on synthetic sentences by
`python -m safety.train_recognizer` (the recipe, its data provenance and licence: safety/data/recognizer/RECIPE.md),
shipped in the package and loaded offline; every file is checked against the SHA-256 it was released with, so a
swapped or damaged model is refused, never used. It runs beside the rules and the stock spaCy model in Presidio's
analyzer (safety/pii.py), on the normalised text.
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

MODEL = Path(__file__).resolve().parent / "data" / "recognizer"
LABELS = {"PERSON": "PERSON", "ADDRESS": "ADDRESS", "DATE_OF_BIRTH": "DATE_OF_BIRTH"}
SCORE = 0.5  # above Presidio's 0.4 threshold, below the rules': on the same span a rule's type wins
NAME = "CandorLearnedRecognizer"
# SHA-256 of each file as released (python -m safety.train_recognizer prints them)
WEIGHTS: dict[str, str] = {
    "config.cfg": "5b1478542ba2f5a5e8bdddeac1205af41ef494d04360ce01eb607a48d5d77a70",
    "meta.json": "cf7f362edbe9290dde54cdda18469d2e2b40d23865278c65a118a7dd38201cda",
    "ner/cfg": "a7172edadafba9f472e9ac0f2660eec04b6405e471be9e20267b79c67288d22d",
    "ner/model": "943796ee7189ad30809e49c2dc7c19c93f5284399bfcdfd8ec57bd53dfcb9f38",
    "ner/moves": "b3f9b45bc56d575d76fb93ba2d4736dee10c05e047ab84f39d700d430ec019fb",
    "tok2vec/cfg": "f8a5a26e3056eb6fb06deeb3dbccfd88ae74900200c98c70b5966bbb7ec9d4de",
    "tok2vec/model": "0cce271dc00ba3fdce9a6a768d2f66ef3d7b27d6a7919f9860289f7751d7d141",
    "tokenizer": "b014e8bba4958b120af2d0c1c63eabb7c00379f2bacaf10df7c5325efd2ea467",
    "vocab/key2row": "76be8b528d0075f7aae98d6fa57a6d3c83ae480a8469e668d7b0af968995ac71",
    "vocab/lookups.bin": "76be8b528d0075f7aae98d6fa57a6d3c83ae480a8469e668d7b0af968995ac71",
    "vocab/strings.json": "791ad222db2affad6978f5d391eb83242e3315d822f2c8265721aa64722e0446",
    "vocab/vectors": "14772b683e726436d5948ad3fff2b43d036ef2ebbe3458aafed6004e05a40706",
    "vocab/vectors.cfg": "ff4359091952c8cd16f1f0482f5770fb82d1707368d5cca3c46aa501f552e3c5",
}


class RecognizerUnavailable(RuntimeError):
    pass


def check(folder: Path = MODEL, weights: dict[str, str] | None = None) -> None:
    """Raises RecognizerUnavailable unless every file of the released model is there with its SHA-256."""
    weights = WEIGHTS if weights is None else weights
    if not weights:
        raise RecognizerUnavailable("no released recognizer (safety/recognizer.py WEIGHTS is empty)")
    problems = []
    for rel, digest in weights.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{rel} differs from the released file (SHA-256)")
    if problems:
        raise RecognizerUnavailable(f"{folder}: not the released PII recognizer: " + "; ".join(problems))


@functools.cache
def load(folder: Path = MODEL):
    """The checked pipeline (spaCy, offline: a folder, never a download)."""
    import spacy

    check(folder)
    return spacy.load(folder)


_WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
_STREET_WORDS = frozenset("""street st road rd avenue ave av lane ln drive dr boulevard blvd way close court ct place pl
terrace crescent square sq parkway highway hwy row walk gardens grove hill park box apt apartment flat unit suite floor
mews yard lodge house cottage farm green rise vale view wharf quay drove circle cir plaza trail""".split())
_PLACE_WORDS = frozenset("""street road avenue boulevard terrace crescent square plaza station airport terminal hospital clinic school college university
bridge hall centre center museum library church cathedral market mall stadium arena hotel castle palace tower bank
branch office""".split())  # not park, hill, green, lane…: surnames too ("Park")
_POSTCODE_TOWN = re.compile(r"\d{4,6}\s+[^\W\d_]+")
_LETTERS = re.compile(r"[^\W\d_]{2,}")
_BIRTH_CUE = re.compile(r"\b(?:born|birth|birthday|dob|d\.o\.b|b\.|n[ée]e?|geboren|nacido|nacida|n[ée] le)\W*$", re.I)
_FULL_DATE = re.compile(r"\d{1,2}\s*[/.\-]\s*\d{1,2}\s*[/.\-]\s*\d{2,4}|\d{4}\s*[/.\-]\s*\d{1,2}\s*[/.\-]\s*\d{1,2}")


def _calendar(word: str) -> bool:
    """A month (safety/recognizers.py's `_MONTH`: names and abbreviations) or a day of the week."""
    from safety.recognizers import _MONTH

    return bool(re.fullmatch(_MONTH, word, re.I)) or word.lower() in _WEEKDAYS


def plausible(text: str, start: int, end: int, label: str) -> bool:
    """What the small model tags that cannot be that kind of value (it was trained on synthetic sentences and calls
    some brands people and some error codes addresses): a name has letters and no digits and is no nationality,
    brand (safety/data/names/not_person.txt) or place; in lower case it must be a known first name or follow a cue
    ("Mr", "I'm", "Hi"); one capitalised word must be that, or no everyday word; a longer one must not be all
    everyday words; an address has a number and a street word or a word that is no everyday English; a date of
    birth is a full date 16+ years back, or any date right after a birth word ("born", "DOB", "née")."""
    from safety.recognizers import _CUE_BEFORE, first_names, is_common, not_person, old_date

    value = text[start:end]
    if "<" in value or ">" in value:  # it reaches into a placeholder another rule wrote (the store's second pass)
        return False
    words = _LETTERS.findall(value)
    if label == "PERSON":
        if not words or any(c.isdigit() for c in value) or all(_calendar(w) for w in words):
            return False
        if all(w.lower() in not_person() for w in words) or words[-1].lower() in _PLACE_WORDS:
            return False  # a nationality, a language, a brand; "Victoria Station", "Baker Street"
        cue = bool(_CUE_BEFORE.search(text[max(0, start - 12):start]))
        known = words[0].lower() in first_names()
        if value.islower():  # all lower case: a phrase unless it is a known first name or follows a cue
            return known or cue
        if len(words) == 1:  # one capitalised word: a known first name, after a cue, or no everyday word
            w = words[0]
            return known or cue or (not is_common(w) and not w.isupper())
        return known or cue or not all(is_common(w) for w in words)
    if label == "ADDRESS":  # a number, and a street word or a word that is not everyday English ("Storgatan 8B")
        if _POSTCODE_TOWN.fullmatch(value) and not text[:start].endswith("\n"):  # "75002 Paris": the rules' postcode
            return False
        return any(c.isdigit() for c in value) and any(
            w.lower() in _STREET_WORDS or (len(w) >= 4 and not is_common(w) and not _calendar(w))
            for w in words)
    if label == "DATE_OF_BIRTH":
        if _BIRTH_CUE.search(text[max(0, start - 25):start]):
            return any(c.isdigit() for c in value)
        if not old_date(value):  # without a birth word, only a full date 16+ years back reads as a birth date
            return False
        day_month_year = _FULL_DATE.search(value) or (
            re.search(r"(?<!\d)\d{1,2}(?:st|nd|rd|th)?(?!\d)", value) and re.search(r"(?<!\d)(?:19|20)\d{2}(?!\d)", value)
            and any(_calendar(w) for w in words))
        return bool(day_month_year)
    return True


def recognizer(folder: Path = MODEL):
    """A Presidio recognizer of the learned model's entities."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    nlp = load(folder)

    class Learned(EntityRecognizer):
        def load(self):
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            doc = nlp(text)
            return [RecognizerResult(LABELS[e.label_], e.start_char, e.end_char, SCORE,
                                     recognition_metadata={"recognizer_name": NAME}) for e in doc.ents
                    if e.label_ in LABELS and LABELS[e.label_] in entities and plausible(text, e.start_char,
                                                                                         e.end_char, e.label_)]

    return Learned(supported_entities=sorted(set(LABELS.values())), name=NAME)


def learned(hit) -> bool:
    return (getattr(hit, "recognition_metadata", None) or {}).get("recognizer_name") == NAME


def yield_to_rules(hits: list) -> list:
    """The learned hits that do not overlap a rule's (or the stock model's) hit of another type: a PIN inside what the
    model calls an address stays a <SECRET>, a postcode stays a <POSTCODE>, an SSN is no date of birth."""
    others = [h for h in hits if not learned(h)]
    return others + [h for h in hits if learned(h) and not any(
        o.entity_type != h.entity_type and o.start < h.end and h.start < o.end for o in others)]
