"""The PII recognizers for what named-entity recognition misses: one registry, one small rule class.

A `Rule` is a regular expression, optionally with a context that must appear shortly before the
match (a date is a date of birth only after "born" / "DOB" / "birthday"), a named group `v` when only
part of the match is the secret ("my PIN is 4821" stores "my PIN is <SECRET>"), and a validator.
Each rule becomes a Presidio `EntityRecognizer`, so Presidio's analyzer and anonymizer run them
beside its own checksum recognizers (cards, IBANs, phones, e-mails, IPs, NINOs) and spaCy's NER.

Every rule errs towards redacting: a false redaction costs a word of a support message, a miss
puts personal data in an audit log. `benchmarks/pii.py` measures both sides.
"""
from __future__ import annotations

import functools
import re

import regex  # the `re` syntax, plus a time limit per match (as Presidio runs its own patterns)
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

from presidio_analyzer import EntityRecognizer, RecognizerResult

DATA = Path(__file__).parent / "data"


@functools.cache
def stopwords() -> frozenset[str]:
    return frozenset((DATA / "nltk" / "corpora" / "stopwords" / "english").read_text(encoding="utf-8").split())


@functools.cache
def common_words() -> frozenset[str]:
    """English words that are not names: WordNet 3.0's lower-case lemmas (proper nouns are capitalised
    there) and the stopwords."""
    import zipfile

    words = set(stopwords())
    with zipfile.ZipFile(DATA / "nltk" / "corpora" / "wordnet.zip") as z:
        for pos in ("adj", "adv", "verb", "noun"):
            for line in z.read(f"wordnet/data.{pos}").decode("utf-8").splitlines():
                if line[:1] == " ":
                    continue
                fields = line.split(" ")
                for lemma in fields[4:4 + 2 * int(fields[3], 16):2]:
                    if lemma.islower():
                        words.add(lemma.split("(")[0])
    return frozenset(words)


def is_common(word: str) -> bool:
    """An everyday English word (or an inflection of one): "broken", "trying", "payments"."""
    w = word.lower().strip(".,;:!?'\"")
    if w in common_words():
        return True
    for suffix, repl in (("s", ""), ("es", ""), ("ed", ""), ("ed", "e"), ("d", ""), ("ing", ""), ("ing", "e"),
                         ("ly", ""), ("ies", "y"), ("ied", "y"), ("'s", "")):
        if w.endswith(suffix) and len(w) > len(suffix) + 2 and w[: -len(suffix)] + repl in common_words():
            return True
    return False


@functools.cache
def not_person() -> frozenset[str]:
    """Nationalities, languages and brands: capitalised like names, naming nobody (safety/data/names/not_person.txt)."""
    text = (DATA / "names" / "not_person.txt").read_text(encoding="utf-8")
    return frozenset(w for line in text.splitlines() if not line.startswith("#") for w in line.split())


@functools.cache
def first_names() -> frozenset[str]:
    """Common US first names (1990 Census, public domain; safety/data/names/SOURCE.md) that are not also
    everyday words of a support chat ("bill", "will", "mark", "may" stay words)."""
    common = set((DATA / "names" / "not_names.txt").read_text(encoding="utf-8").split()) | stopwords()
    return frozenset(n for n in (DATA / "names" / "first_names.txt").read_text(encoding="utf-8").split()
                     if n not in common)


TIMEOUT_SECONDS = 0.25  # per rule and text; a text that needs more is not stored or learned at all


class RedactionTimeout(ValueError):
    """A text the rules could not check in time (a pathological input)."""


@dataclass(frozen=True)
class Rule:
    entity: str
    pattern: str
    context: str = ""  # a regex that must match within `window` characters before the hit
    window: int = 40
    validate: Callable[[str], bool] | None = None  # False drops the hit
    trim: Callable[[str], int] | None = None  # how many characters of the hit to keep (0 drops it)
    not_ner: bool = False  # drop a hit inside what NER calls a place, organisation, product ...
    score: float = 0.6
    flags: int = re.IGNORECASE
    overlapping: bool = False  # try a match at every position (cues that chain: "hi its tom")
    gap: int = 4  # words allowed between the context and the hit
    sentence: bool = True  # the context must be in the hit's sentence

    @functools.cached_property
    def regex(self):
        return regex.compile(f"(?=(?P<all>{self.pattern}))" if self.overlapping else self.pattern, self.flags)

    @functools.cached_property
    def context_regex(self) -> re.Pattern | None:
        # up to `gap` words between the context and the hit (within one sentence unless `sentence` is off)
        other = r"[^\w.;!?]" if self.sentence else r"\W"
        return re.compile(rf"(?:{self.context})\.?{other}*(?:\w+{other}+){{0,{self.gap}}}$", re.IGNORECASE) \
            if self.context else None

    def find(self, text: str) -> list[tuple[int, int]]:
        out = []
        try:
            matches = list(self.regex.finditer(text, timeout=TIMEOUT_SECONDS))
        except TimeoutError:
            raise RedactionTimeout(f"a PII rule took over {TIMEOUT_SECONDS} s on a {len(text)}-character text") from None
        for m in matches:
            whole = "all" if self.overlapping else 0
            start, end = m.span("v") if "v" in self.regex.groupindex and m.group("v") else m.span(whole)
            value = text[start:end]
            if not value.strip():
                continue
            if self.context_regex and not self.context_regex.search(text[max(0, m.start() - self.window):m.start()]):
                continue
            if self.validate and not self.validate(value):
                continue
            if self.trim:
                end = start + self.trim(value)
                if end == start:
                    continue
            out.append((start, end))
        return out


def _first_name_then_names(text: str) -> bool:
    """"Lucas Pereira" even where NER says a place; not "Victoria Station"."""
    words = text.split()
    return words[0].lower() in first_names() and not any(is_common(w) for w in words[1:])


class RuleRecognizer(EntityRecognizer):
    """A `Rule` as a Presidio recognizer."""

    def __init__(self, name: str, rule: Rule):
        self.rule = rule
        super().__init__(supported_entities=[rule.entity], name=name, supported_language="en")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        hits = self.rule.find(text)
        if self.rule.not_ner and nlp_artifacts is not None:
            other = [(e.start_char, e.end_char) for e in nlp_artifacts.entities or []
                     if e.label_ in ("LOCATION", "GPE", "LOC", "FAC")]  # places; ORG is often a name in this model
            hits = [(s, e) for s, e in hits if not any(s < oe and os_ < e for os_, oe in other)
                    or _first_name_then_names(text[s:e])]
        return [RecognizerResult(self.rule.entity, s, e, self.rule.score) for s, e in hits]


# ------------------------------------------------------------------ validators
_DATE_SHAPES = (re.compile(r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2}|\d{4})"), re.compile(r"(\d{4})[/.\-](\d{1,2})[/.\-](\d{1,2})"))


def is_date(text: str) -> bool:
    """A numeric date (12/03/2024, 2024-03-14, 3.4.24): other dates are not personal data, so a digit
    run that reads as one is left alone (a date of birth has its own rule)."""
    text = text.strip()
    for shape in _DATE_SHAPES:
        m = shape.fullmatch(text)
        if not m:
            continue
        a, b, c = (int(g) for g in m.groups())
        for y, mo, d in ((c, b, a), (c, a, b)) if shape is _DATE_SHAPES[0] else ((a, b, c),):
            try:
                date(y if y > 99 else 2000 + y, mo, d)
                return True
            except ValueError:
                pass
    return bool(re.fullmatch(r"(19|20)\d\d\s*[/\-]\s*(19|20)?\d\d", text))  # a year range: 2019/2020


def not_date(text: str) -> bool:
    return not is_date(text)


_NOT_SECRETS = frozenset("""not wrong incorrect blocked locked expired invalid working correct right missing still being
changed reset lost stolen compromised forgotten required needed asking needs required wrong asked the same too short
long weak strong saved stored different new old case sensitive broken disabled showing accepted rejected declined
valid ok okay fine gone there here what which where how why when who it this that mine yours unknown unclear
hidden visible sent log login sign access use get enter change update create recover unlock remember see be work
type make set send confirm verify my your it""".split())


def secret_length(text: str) -> int:
    """How much after "password is" / "PIN:" is the secret: one value ("hunter2", "7 3 5 9"), or a
    passphrase of 3+ words ("correct horse battery staple"); then more words up to a stopword.
    0 for words about the secret ("my PIN is blocked", "my password is not working")."""
    if re.fullmatch(r"\d(?:\s\d)+", text):
        return len(text)
    words = list(re.finditer(r"\S+", text))
    clean = [w.group().strip(".,;:!?)\"'”’").lower() for w in words]
    run = 0
    for raw, w in zip(words, clean):
        if not w or w in stopwords():
            break
        run += 1
        if raw.group()[-1] in ".,;:!?)":  # the clause ends here
            break
    if not secret_value(words[0].group()) and run < 3:
        return 0
    end = words[max(run, 1) - 1].end()
    return len(text[:end].rstrip(".,;:!?)\"'”’"))


def luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()][::-1]
    return len(digits) >= 12 and sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
                                     for i, d in enumerate(digits)) % 10 == 0


def secret_value(text: str) -> bool:
    """After "password is", "my PIN is" ...: a value, not a word about it ("my PIN is blocked", "PIN 3 times")."""
    word = text.strip(".,;:!?\"'()").lower()
    if word.isdigit() and len(word) < 3:
        return False
    return bool(word) and word not in _NOT_SECRETS and word not in stopwords() and not (
        word.isalpha() and (word.endswith("ed") or word.endswith("ing")))


_NOT_NAMES = frozenset("""trying looking calling writing having unable able here back sorry new still just really very
not happy glad interested wondering afraid sure concerned confused frustrated annoyed going about customer client
member user account holder owner again""".split())


def name_length(cue: str) -> Callable[[str], int]:
    """How much of the words after a cue is a name (characters; 0: none).

    The first word decides: after a strong cue ("my name is") any word that is not a stopword; after an
    identity cue ("i'm", "it's") a common first name or a word that is no English word ("its vikram");
    after a weak cue ("hi", "thanks", "to") a common first name or a capitalised non-word ("Hi Yusuf").
    Then up to two more words follow while they look like a name (capitalised, or no English word,
    or anything but a stopword after a strong start)."""
    def length(text: str) -> int:
        words = list(re.finditer(r"[\wà-ÿĀ-ž'-]+", text))
        if not words:
            return 0
        first = words[0].group().strip("'")
        low = first.lower()
        if low in stopwords() or low in _NOT_NAMES or low in not_person():  # "I am Maltese", "thanks Klarna"
            return 0
        known = low in first_names()
        capital = first[:1].isupper() and not is_common(first)
        strong = cue == "strong" or known
        if cue == "identity" and first[:1].isupper():
            capital = True  # "I'm Precious Mwangi": a capitalised word after "I'm" is a name
        if not (strong or capital or (cue == "identity" and not is_common(first))):
            return 0
        end = words[0].end()
        for w in words[1:3]:
            word = w.group()
            if word.lower() in stopwords() or word.lower() in _NOT_NAMES:
                break
            if not (strong or word[:1].isupper() or not is_common(word)):
                break
            end = w.end()
        return end
    return length


_CUE_BEFORE = re.compile(r"(?:\b(?:mr|mrs|ms|miss|mx|dr|name|surname|named|called|i'?m|i\s+am|name\s+is|hi|hello|hey|dear|thanks|"
                        r"regards|cheers|its|it's)\W*)$", re.IGNORECASE)


def capitalised_name(text: str) -> bool:
    """Two to four capitalised words that read as a name: a first name that is no everyday word, or
    no everyday word at all ("Aleksandr Petrov"; not "Dark Mode", "Apple Pay")."""
    words = re.findall(r"[\wà-ÿĀ-ž'-]+", text)
    first = words[0]
    return first.lower() in first_names() or not any(is_common(w) for w in words)


def plausible_ner_person(text: str, start: int, end: int) -> bool:
    """spaCy's small model calls some brands and features people ("Mastercard", "Dark Mode", "max"):
    keep a one-word PERSON only if it is a first name or follows a cue ("Mr", "I'm", "Hi"), and a longer
    one unless every word is an everyday English word."""
    words = re.findall(r"[\wà-ÿĀ-ž'-]+", text[start:end])
    if not words or all(w.lower() in not_person() for w in words):
        return False
    if len(words) == 1:
        return words[0].lower() in first_names() or bool(_CUE_BEFORE.search(text[max(0, start - 12):start]))
    return words[0].lower() in first_names() or not any(is_common(w) for w in words)


def old_date(text: str) -> bool:
    """A full date 16+ years back reads as a date of birth, with or without birth words nearby."""
    years = [int(y) for y in re.findall(r"(?<!\d)(\d{4}|\d{2})(?!\d)", text)]
    year = next((y for y in reversed(years) if y >= 1900), None)
    return year is not None and 1900 <= year <= date.today().year - 16


def iban(text: str) -> bool:
    s = re.sub(r"\s", "", text).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}", s):
        return False
    n = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(n) % 97 == 1


def iban_length(text: str) -> int:
    """The longest start of `text` (cut at a space) that is a valid IBAN ("es91 2100 … 1332 was" → without "was")."""
    cuts = [m.start() for m in re.finditer(r"\s", text)] + [len(text)]
    return next((n for n in reversed(cuts) if iban(text[:n])), 0)


def ipv6(text: str) -> bool:
    return (text.count(":") >= 3 or "::" in text) and bool(re.search(r"[0-9a-fA-F]", text))


# ------------------------------------------------------------------ the patterns
_NUM_WORD = r"(?:zero|oh|o|one|two|three|four|five|six|seven|eight|nine|double|triple|hundred)"
_STREET = (r"street|st|road|rd|avenue|ave|av|lane|ln|drive|dr|boulevard|blvd|way|close|court|ct|place|pl|terrace|"
           r"terr|crescent|cres|parkway|pkwy|square|sq|gardens|gdns|grove|gr|hill|row|mews|highway|hwy|circle|cir|"
           r"trail|trl|parade|embankment|wharf|quay|alley|broadway|causeway|esplanade|promenade|approach|side|walk|paddocks|"
           r"meadows|fields|heights|vale|gate|yard|cottages|villas|croft|grange|orchard|ridge|wynd|loan|brae")
_STREET_WORD = r"(?!(?:in|on|at|the|a|an|of|to|for|my|your|our|and|or|is|was|by|with|from|per|more|other|one|two|" \
               r"three|few|many|all|each|every|same|only|easy|quick|best|new|old|last|next|days|weeks|hours|items|" \
               r"times|ways|min|mins|minute|minutes|mile|miles|km|months|years|step|steps|of)\b)[a-zà-ÿĀ-ž'][\wà-ÿĀ-ž'.-]*"
_TRAILING_UNIT = r"(?:,?\s+(?:flat|apt|apartment|unit|suite|ste|#|piso|puerta)\.?\s*#?\s*[\w/-]+|,\s*\d+[ºª°]\s*\w*)?"
_UNIT = (r"(?:(?:(?:flat|apt|apartment|unit|suite|ste|room|floor|building|bldg)\.?\s*#?\s*[\w/-]+|\d+(?:st|nd|rd|th)\s+"
         r"floor),?\s+)?(?:(?-i:[A-Z])[\w'-]+\s+(?:house|court|building|tower|lodge|mansions|apartments|hall|block|"
         r"cottage|centre|center),?\s+)?")
_EU_SUFFIX = (r"straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer|gracht|straat|laan|plein|kade|dijk|gatan|"
              r"vägen|gade|vej|veien|gata|katu|tie")
_EU_PREFIX = r"rue|avenue|av\.|boulevard|bd|chemin|impasse|allée|quai|cours|via|viale|piazza|corso|calle|avenida|plaza|" \
             r"paseo|carrer|rua|praça|travessa"
_ARTICLE = r"(?:(?:de|du|des|la|le|les|del|della|dei|di|da|do|dos|das|dello|y)\s+|[dl]')*+"  # possessive: no backtracking
_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|" \
         r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_DATE = (rf"\d{{1,2}}[/.\-]\d{{1,2}}[/.\-](?:\d{{4}}|\d{{2}})|\d{{4}}[/.\-]\d{{1,2}}[/.\-]\d{{1,2}}|"
         rf"\d{{1,2}}(?:st|nd|rd|th)?(?:\s+of)?\s+{_MONTH},?(?:\s+\d{{4}}|\s+'?\d{{2}})?|"
         rf"{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}}|\s+'\d{{2}})?")
_SECRET_WORDS = (r"password|passwd|pwd|pass\s?code|pass\s?word|pin(?:\s?(?:number|code|no\.?))?|cvv2?|cvc2?|csc|"
                 r"security\s+(?:code|number|answer|word)|memorable\s+(?:word|answer|information|date|name|place)|"
                 r"secret\s+(?:answer|word|code|question\s+answer)|one[-\s]time\s+(?:code|password|passcode|pin)|"
                 r"otp|verification\s+code|access\s+code|login\s+code|log-?in\s+details|passphrase|card\s+code")
_SEP = r"[\s.\-/]?"

_NAME = r"(?P<v>[a-zà-ÿĀ-ž][\wà-ÿĀ-ž'-]*(?:\s+[a-zà-ÿĀ-ž][\wà-ÿĀ-ž'-]*){0,2})"

RULES: dict[str, Rule] = {
    # street addresses: house number (+ flat/unit) + street words + street type; European word orders
    "street_address": Rule("ADDRESS", rf"\b{_UNIT}\d{{1,5}}[a-z]?(?:[-/]\d{{1,5}})?,?\s+(?:the\s+(?:{_STREET_WORD}\s+){{0,2}}|"
                                      rf"(?:{_STREET_WORD}\s+){{1,3}})"
                                      rf"(?:{_STREET})\b\.?{_TRAILING_UNIT}", score=0.65),
    "eu_street_suffix": Rule("ADDRESS", rf"\b[\wäöüß-]*(?:{_EU_SUFFIX})\s+\d{{1,4}}[a-z]?\b{_TRAILING_UNIT}", score=0.65),
    "eu_street_suffix_after": Rule("ADDRESS", rf"\b\d{{1,4}}[a-z]?,?\s+[\wäöüß-]*(?:{_EU_SUFFIX})\b", score=0.65),
    # "Ermou 25, 105 63 Athens": a street of any name right before a postcode and a town
    "street_before_postcode": Rule("ADDRESS", r"(?P<v>\b(?-i:[A-ZÀ-ÝĀ-ž])[\wà-ÿĀ-ž'.-]+(?:\s+[\wà-ÿĀ-ž'.-]+){0,3}\s+\d{1,4}[a-z]?"
                                              r"(?:\s*,\s*\d+[ºª°]?\s*\w*)?)\s*,\s+(?:\d{3}\s?\d{2}|\d{4,5}|\d{2}-\d{3}|"
                                              r"\d{4}\s?[A-Z]{2})\s+(?-i:[A-ZÀ-ÝĀ-ž])", score=0.6),
    "eu_street_prefix": Rule("ADDRESS", rf"\b\d{{1,4}}(?:\s?(?:bis|ter|[a-z]))?,?\s+(?:{_EU_PREFIX})\s+{_ARTICLE}"
                                        rf"[\wà-ÿĀ-ž'-]+(?:\s+[A-ZÀ-ÝĀ-ž][\wà-ÿĀ-ž'-]*)*", score=0.65),
    "eu_street_prefix_after": Rule("ADDRESS", rf"\b(?:{_EU_PREFIX})\s+{_ARTICLE}[\wà-ÿĀ-ž'-]+(?:\s+[\wà-ÿĀ-ž'-]+)?,?\s+"
                                              r"\d{1,4}[a-z]?\b", score=0.65),
    "po_box": Rule("ADDRESS", r"\bP\.?\s?O\.?\s*Box\s+\d+", score=0.65),
    # postcodes: the UK shape is distinctive; a ZIP or EU code only next to address words
    "ca_postcode": Rule("POSTCODE", r"\b[A-Z]\d[A-Z]\s?\d[A-Z]\d\b", score=0.6),
    "eircode": Rule("POSTCODE", r"\b[A-Z]\d[\dW]\s?(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{4}\b", score=0.6),
    "au_postcode": Rule("POSTCODE", r"\b(?:NSW|VIC|QLD|TAS|ACT|WA|SA|NT)\s+(?P<v>\d{4})\b", flags=0, score=0.6),
    "pl_postcode": Rule("POSTCODE", r"(?<![\d-])(?P<v>\d{2}-\d{3})\s+(?-i:[A-ZŁŚŻŹĆ])", score=0.6),
    "uk_postcode": Rule("POSTCODE", r"\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2}\b", score=0.6),
    "us_zip": Rule("POSTCODE", r"(?<![\d-])(?P<v>\d{5}(?:-\d{4})?)(?![\d-])",
                   context=r"zip|zipcode|postcode|postal|post\s+code|address|(?-i:\b[A-Z]{2}\b)|" + _STREET + r"|"
                           r"live|lives|living|moved|deliver|send|ship\s+to|city|town|usa|u\.s\.", score=0.6),
    "eu_postcode": Rule("POSTCODE", r"(?<![\d-])(?P<v>\d{4,5}|\d{4}\s?[A-Z]{2}|\d{2}-\d{3}|\d{3}\s\d{2})\s+(?-i:[A-ZÀ-ÝĀ-ž])"
                                    r"[\wà-ÿĀ-ž-]+",
                        context=r"zip|postcode|postal|post\s+code|address|" + _STREET + "|" + _EU_SUFFIX + "|"
                                + _EU_PREFIX + r"|live|lives|living|moved|deliver|send|ship", window=60, score=0.6),
    # a date is a date of birth only next to birth words
    "date_of_birth": Rule("DATE_OF_BIRTH", rf"\b(?:{_DATE})\b",
                          context=r"birth|born|dob|d\.o\.b|birthday|b'?-?day|geburtsdatum|geboren|nacimiento|nacid[oa]|"
                                  r"naissance|née?|nascita|nat[oa]|age", window=80, gap=10, score=0.9),
    "old_date": Rule("DATE_OF_BIRTH", rf"\b(?:{_DATE})\b", validate=old_date, score=0.6),
    "birth_year": Rule("DATE_OF_BIRTH", r"(?:born|birth)\s+(?:in\s+)?(?P<v>(?:19|20)\d\d)\b", score=0.6),
    # national and travel documents
    "us_ssn": Rule("US_SSN", r"(?<![\d.-])\d{3}([- .])\d{2}\1\d{4}(?![\d.-])", score=0.7),
    "us_ssn_plain": Rule("US_SSN", r"(?<![\d-])\d{9}(?![\d-])", context=r"ssn|social\s+security|social", score=0.8),
    "passport": Rule("PASSPORT", r"\b(?P<v>(?=[A-Z0-9]*\d[A-Z0-9]*\d[A-Z0-9]*\d[A-Z0-9]*\d)[A-Z0-9]{6,12})\b",
                     context=r"passport", score=0.9),
    "driving_licence": Rule("DRIVING_LICENCE", r"\b(?P<v>(?=[A-Z0-9-]*\d[A-Z0-9-]*\d[A-Z0-9-]*\d[A-Z0-9-]*\d)"
                                               r"[A-Z0-9]+(?:-[A-Z0-9]+)*)\b",
                            context=r"licen[cs]e|driving|driver'?s?|\bDL\b|permit", score=0.9),
    "driving_licence_spaced": Rule("DRIVING_LICENCE", r"\b(?P<v>(?=(?:[A-Z ]*\d){4})[A-Z0-9]{2,}(?:\s[A-Z0-9]{2,}){1,4})\b",
                                   context=r"licen[cs]e|driving|driver'?s?", flags=0, score=0.9),
    "uk_nino": Rule("UK_NINO", r"\b[A-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b", score=0.9),  # QQ... examples too
    # credentials: the value after "password is", "PIN:", "CVV" ...
    "secret": Rule("SECRET", rf"\b(?:{_SECRET_WORDS})\b(?:\s+(?:for|on|of|to)\s+(?:my|the|your|our)\s+[\w-]+"
                             rf"(?:\s+[\w-]+)?)?(?:,?\s+(?:i|we|you)\s+(?:set|chose|picked|used|use|have|had|gave|put))?"
                             r"(?:,?\s*(?:(?:is|was|are|to|'s|would\s+be|should\s+be)\b|=|:|-)(?:\s+(?:it|maybe|probably|"
                             r"possibly|perhaps|either|like|just|now|still|set\s+to|changed\s+to))*\s*|"
                             r"\s+(?=\S*?(?:\d|[^\w\s.,;!?'’])))[\"'“‘]?(?P<v>\d(?:\s\d){2,7}(?!\S)|[^\s\"'”’]+(?:[ \t]+[^\s\"'”’.,;!?]+){0,5})",
                   trim=lambda v: secret_length(v), score=0.8),
    "pin_digits": Rule("SECRET", r"(?<![\d.,£$€#/:-])\b\d{3,6}\b(?![.,:/-]?\d)",
                       context=r"\bpin\b|pass\s?code|cvv|cvc|security\s+code", window=120, gap=20, sentence=False,
                       score=0.6),
    # e-mail addresses written to dodge a filter: name (at) domain (dot) com, name at domain dot com
    "ipv6": Rule("IP_ADDRESS", r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])", validate=ipv6, score=0.7),
    "iban_any_case": Rule("IBAN_CODE", r"\b[a-z]{2}\d{2}(?:\s?[a-z0-9]{4}){2,7}(?:\s?[a-z0-9]{1,4})?\b", trim=iban_length,
                          score=0.9),
    "obfuscated_email": Rule("EMAIL_ADDRESS",
                             r"\b[\w+-]+(?:(?:\s*(?:\(dot\)|\[dot\]|\{dot\})\s*|\s+dot\s+|\.)[\w+-]+)*"
                             r"(?:\s*(?:\(at\)|\[at\]|\{at\}|\(@\)|\[@\])\s*|\s+at\s+)"
                             r"[\w-]+(?:(?:\s*(?:\(dot\)|\[dot\]|\{dot\})\s*|\s+dot\s+|\.)[\w-]+)*"
                             r"(?:\s*(?:\(dot\)|\[dot\]|\{dot\})\s*|\s+dot\s+|\.)"
                             r"(?:com|org|net|edu|gov|io|co|uk|de|fr|es|it|nl|ie|eu|info|biz|me|us|ca|au|in|ch|at|be|se|"
                             r"dk|no|fi|pl|pt|br|mx|jp|cn|ru)\b", score=0.7),
    # numbers: any run of 6+ digits (spaces, dashes, dots, slashes allowed) unless it reads as a date;
    # an identifier with letters and 5+ digits (ID12345678, CUS-99281734, X1234567)
    "card_dotted": Rule("CREDIT_CARD", r"(?<![\w.])\d{4}([./])\d{4}\1\d{4}\1\d{1,7}(?![\w/])", validate=lambda t: luhn(t),
                        score=0.9),
    "digit_run": Rule("ACCOUNT_NUMBER", rf"(?<![\w.,/-])\d(?:{_SEP}\d){{5,}}(?![\w/-]|[.,]\d)", validate=not_date,
                      score=0.5),
    "identifier": Rule("ACCOUNT_NUMBER", r"\b(?=[A-Z0-9/-]*[A-Z])(?=(?:[A-Z/-]*\d){5})[A-Z0-9]+(?:[-/][A-Z0-9]+)*\b",
                       validate=not_date, score=0.5),
    "sort_code": Rule("ACCOUNT_NUMBER", r"(?<![\d-])\d{2}-\d{2}-\d{2}(?![\d-])", context=r"sort\s*code|sortcode",
                      score=0.6),
    # digits written as words: "four eight one five nine two three six"
    "spelled_digits": Rule("ACCOUNT_NUMBER", rf"\b(?:plus\s+)?{_NUM_WORD}(?:[\s,-]+{_NUM_WORD}){{5,}}\b",
                           validate=lambda t: len(spelled_to_digits(t)) >= 6, score=0.6),
    # a name in lower case after "my name is" (NER finds capitalised names)
    "name_strong_cue": Rule("PERSON", r"\b(?:my\s+name\s+is|my\s+name's|name\s*:|call\s+me|names?\s+on\s+the\s+"
                                      r"(?:account|card)\s+is|account\s+holder\s+is|cardholder\s+name\s+(?:is|to)|"
                                      r"(?:sur|last\s+|first\s+|full\s+|fore|maiden\s+)name(?:\s+is|\s*:)?|"
                                      r"signed,?)\s+" + _NAME, trim=name_length("strong"), score=0.7),
    "capitalised_name": Rule("PERSON", r"\b[A-ZÀ-ÝĀ-ž][a-zà-ÿĀ-ž]+(?:[-'][A-ZÀ-ÝĀ-ža-zà-ÿĀ-ž]+)?(?:\s+[A-ZÀ-ÝĀ-ž][a-zà-ÿĀ-ž]+"
                                       r"(?:[-'][A-ZÀ-ÝĀ-ža-zà-ÿĀ-ž]+)?){1,3}\b", flags=0, validate=capitalised_name,
                             overlapping=True, not_ner=True, score=0.5),
    "name_here": Rule("PERSON", r"(?:^|[,.!:;]\s*|\b(?:hi|hello|hey)\W+)(?P<v>[^\W\d_][\w'-]*(?:\s+[^\W\d_][\w'-]*){0,2})"
                                r"\s+(?:here|speaking)\b", trim=name_length("identity"), overlapping=True, score=0.6),
    "name_after_asking": Rule("PERSON", r"\b(?:ask\s+for|speak\s+(?:to|with)|talk\s+to|help,?|spoke\s+(?:to|with)|"
                                        r"(?:joint\s+)?(?:account\s+)?holder(?:\s+is|:)?|(?:card)?holder(?:'s)?\s+name:?|"
                                        r"name(?:\s+is)?|name\s*-|surname(?:\s+(?:from|to|is|was))?|"
                                        r"changed\s+it\s+(?:back\s+)?to|(?:system|passport|card|account)\s+(?:still\s+)?says)"
                                        r"\s+" + _NAME,
                             trim=name_length("weak"), overlapping=True, score=0.6),
    "name_identity_cue": Rule("PERSON", r"\b(?:i\s*'?\s*m|i\s+am|this\s+is|it\s*'?\s*s|its)[\s,]+" + _NAME,
                              trim=name_length("identity"), overlapping=True, score=0.6),
    "name_weak_cue": Rule("PERSON", r"\b(?:thanks|thank\s+you|regards|cheers|hi|hello|hey|dear|husband|wife|son|"
                                    r"daughter|mother|father|mum|mom|dad|partner|brother|sister|mr|mrs|ms|miss|mx|"
                                    r"agent|called|named)[\s,.]+" + _NAME,
                          trim=name_length("weak"), overlapping=True, not_ner=True, score=0.6),
}

_WORD_DIGIT = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9"}


def spelled_to_digits(text: str) -> str:
    """"double oh seven" → "007"; "nine hundred" → "900"."""
    out, times = [], 1
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in ("double", "triple"):
            times = 2 if w == "double" else 3
        elif w == "hundred":
            out.append("00")
        elif w in _WORD_DIGIT:
            out.append(_WORD_DIGIT[w] * times)
            times = 1
    return "".join(out)


def recognizers() -> list[RuleRecognizer]:
    return [RuleRecognizer(name, rule) for name, rule in RULES.items()]
