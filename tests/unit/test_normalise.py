"""safety/normalise.py: the one normalisation before every PII rule and the recognizer, mapped back to the original."""
import pytest

from safety.normalise import normalise


@pytest.mark.parametrize("text, expected", [
    ("card 4539_1488_0343_6467 ok", "card 4539 1488 0343 6467 ok"),
    ("4539,1488,0343,6467", "4539 1488 0343 6467"),
    ("4539*1488*0343*6467", "4539 1488 0343 6467"),
    ("4539 | 1488 | 0343 | 6467", "4539 1488 0343 6467"),
    ("zeb.quattle @ examplemail.com", "zeb.quattle@examplemail.com"),
    ("zebquattle[at]examplemail[.]com", "zebquattle@examplemail.com"),
    ("zeb.quattle@examplemail . com", "zeb.quattle@examplemail.com"),
    ("zeb.quattle%40examplemail.com", "zeb.quattle@examplemail.com"),
    ("jo (at) example (dot) com", "jo@example.com"),
    ("Zeb\u200bul\u200con Quattle\u00adbaum", "Zebulon Quattlebaum"),
    ("Zebul\u03bfn \u0430nd Qu\u0430ttlebaum", "Zebulon and Quattlebaum"),  # Greek omicron, Cyrillic a
])
def test_obfuscations_are_undone(text, expected):
    assert normalise(text).text == expected


@pytest.mark.parametrize("text", [
    "привет мир, Ελλάδα",  # words wholly in another alphabet stay as they are
    "I paid 1,000,000 on 12 5 2020", "order 12,500 and 3,400", "mail me at jo@example.com. thanks",
    "meet at the café at 5", "version 1.2.3 | build 45",
])
def test_ordinary_text_is_left_alone(text):
    assert normalise(text).text == text


def test_every_character_maps_back_to_what_the_user_wrote():
    text = "hi, card 4539 | 1488 | 0343 | 6467 and mail zeb[at]ex[.]com from Zeb\u200bulon"
    n = normalise(text)
    for value in ("4539 1488 0343 6467", "zeb@ex.com", "Zebulon"):
        i = n.text.index(value)
        a, b = n.original(i, i + len(value))
        assert text[a:b] in ("4539 | 1488 | 0343 | 6467", "zeb[at]ex[.]com", "Zeb\u200bulon")
    assert n.original(0, 3) == (0, 3)  # untouched text maps to itself
