"""Redaction (Presidio recognizers) and the input guard."""
import pytest

from safety.guard import Rejected, guard
from safety.pii import redact


@pytest.mark.parametrize("text, entity, secret", [
    ("my card is 4111 1111 1111 1111 thanks", "CREDIT_CARD", "4111"),
    ("card 5500-0000-0000-0004 please", "CREDIT_CARD", "5500"),
    ("write to jane.doe@example.co.uk today", "EMAIL_ADDRESS", "jane.doe"),
    ("call me on +1 415-555-0132", "PHONE_NUMBER", "555-0132"),
    ("IBAN GB82 WEST 1234 5698 7654 32 is mine", "IBAN_CODE", "5698"),
    ("account number 12345678 is blocked", "ACCOUNT_NUMBER", "12345678"),
])
def test_each_kind_of_pii_is_replaced_by_its_type(text, entity, secret):
    r = redact(text)
    assert secret not in r.text and f"<{entity}>" in r.text and entity in r.found


def test_luhn_decides_what_is_a_card():
    assert redact("4111 1111 1111 1111").found == ["CREDIT_CARD"]
    bad = redact("4111 1111 1111 1112")  # fails the Luhn check: not called a card, still never kept
    assert "CREDIT_CARD" not in bad.found and "4111" not in bad.text


def test_ordinary_text_and_small_numbers_are_left_alone():
    for text in ["I want to cancel order 123", "in 2024 I paid 150 dollars", "where is my package?"]:
        assert redact(text).text == text and redact(text).found == []


def test_several_entities_in_one_message():
    r = redact("card 4111111111111111, mail a.b@example.com, phone +44 20 7946 0958")
    assert r.text == "card <CREDIT_CARD>, mail <EMAIL_ADDRESS>, phone <PHONE_NUMBER>"
    assert r.found == ["CREDIT_CARD", "EMAIL_ADDRESS", "PHONE_NUMBER"]


def test_guard_normalises_and_caps():
    assert guard("  hello\x00 \u200b there\n") == "hello there"
    with pytest.raises(Rejected, match="empty"):
        guard(" \n\t ")
    with pytest.raises(Rejected, match="1001 characters long; the limit is 1000"):
        guard("x" * 1001)
    assert guard("x" * 1000) == "x" * 1000
