"""The spelling front end (safety/spelling.py): misspelt words become known words; nothing else changes."""
import pytest

from safety.spelling import correct, speller


@pytest.mark.parametrize("typed, meant", [
    ("delteing pro account", "deleting pro account"),  # Pruthi et al.'s swap of neighbours
    ("I would like to sign up to the company newslteter", "I would like to sign up to the company newsletter"),
    ("Cancle my order", "Cancel my order"),  # capitalised as the first word: case kept
    ("where is my parcle", "where is my parcel"),
    ("i frogot my pasword", "i forgot my password"),
    ("can i get an invoce", "can i get an invoice"),
])
def test_a_misspelt_word_becomes_the_known_word_closest_to_it(typed, meant):
    assert correct(typed) == meant


@pytest.mark.parametrize("text", [
    "hi, my name is <PERSON>, my card <CREDIT_CARD> was charged twice",  # placeholders
    "order 4432 placed on 12/03, ref AB12CD, code x7qz9",  # numbers, and letters touching digits
    "I dont want the freemium plan, just the signup link",  # the extra word list
    "my friend Ngozi says the NASA shop ships to Lagos",  # capitalised later on (a name), capitals (an acronym)
    "it's the item I didn't order",  # apostrophes
    "ur order pls",  # shorter than MIN_LENGTH
    "where is my parcel? I want a refund!",  # every word known
    '<img src=x onerror="alert(1)"> see www.exampel.com/ordr or mail jo_smiht@exampel.org',  # markup, addresses
])
def test_placeholders_numbers_names_and_known_words_are_left_byte_for_byte(text):
    assert correct(text) == text


def test_correcting_twice_changes_nothing_more_and_only_the_misspelt_spans_move():
    text = "  Plese,   i cant find the shiping   options for order #991 :( "
    once = correct(text)
    assert once == "  Please,   i cant find the shipping   options for order #991 :( "
    assert correct(once) == once


def test_a_word_with_no_known_word_near_it_is_kept():
    assert speller().correction("xqzvwk", first=False) is None
    assert correct("xqzvwk") == "xqzvwk"
