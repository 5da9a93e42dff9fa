"""Redact PII before anything is logged or stored: Presidio's recognizers, Presidio's anonymizer.

Recognizers (no spaCy model needed, so this works offline): e-mail, phone (libphonenumber),
payment card (Luhn-checked), IBAN (mod-97 checked), US bank number, plus an account-number
pattern for any run of 6–19 digits (spaces/dashes allowed) — over-redacting a number is the
safe side. Each hit becomes `<ENTITY>`, e.g. "card <CREDIT_CARD>".
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_BANK_NUMBER", "ACCOUNT_NUMBER")
MIN_SCORE = 0.0  # every hit counts: the cost of a false redaction is a word, of a miss a leak


@dataclass
class Redaction:
    text: str
    found: list[str]  # entity types replaced, in text order (never the values)


def _offline_tldextract() -> None:
    """The e-mail recognizer validates the domain with tldextract, which would fetch the public
    suffix list from the network; use the snapshot bundled with tldextract instead."""
    import types

    import tldextract
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    email_recognizer.tldextract = types.SimpleNamespace(extract=offline)


@functools.cache
def _engines():
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                          PhoneRecognizer, UsBankRecognizer)
    from presidio_anonymizer import AnonymizerEngine

    _offline_tldextract()
    account = PatternRecognizer(supported_entity="ACCOUNT_NUMBER", name="AccountNumberRecognizer", patterns=[
        Pattern("digit run", r"(?<![\w])\d(?:[ -]?\d){5,18}(?![\w])", 0.5)])
    recognizers = [EmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer(),
                   UsBankRecognizer(), account]
    return recognizers, AnonymizerEngine()


def warm_up() -> None:
    """Import Presidio (a few seconds) before the first message, not during it."""
    redact("warm up a@b.com")


def redact(text: str) -> Redaction:
    from presidio_anonymizer.entities import OperatorConfig

    recognizers, anonymizer = _engines()
    hits = [h for r in recognizers for h in r.analyze(text, r.supported_entities, None) if h.score >= MIN_SCORE]
    if not hits:
        return Redaction(text, [])
    out = anonymizer.anonymize(text, hits, operators={"DEFAULT": OperatorConfig("replace")})
    return Redaction(out.text, [i.entity_type for i in sorted(out.items, key=lambda i: i.start)])


def redact_text(text: str) -> str:
    return redact(text).text
