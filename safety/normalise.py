"""One normalisation before every PII rule and the recognizer: what people do to get personal data past a filter.

- invisible characters (zero-width spaces and joiners, soft hyphens, word joiners, BOMs) are dropped;
- letters from other alphabets that look like Latin ones, inside a word that also has Latin letters (a Greek "ο" or a
  Cyrillic "а" in "Zebulοn"), become the Latin letter;
- separators inside a long run of digit groups (`4539_1488_0343_6467`, `4539,1488,0343,6467`, `4539*1488*…`,
  `4539 | 1488 | …`) become single spaces;
- obfuscated e-mails become plain ones: spaces around `@`, `[at]` `(at)` `{at}`, `[.]` `(dot)` `[dot]`, `%40`, and
  spaces around the dots of the domain after an `@`.

`normalise(text)` returns the normalised text and, for each of its characters, the span of the original it came
from, so that a value found in the normalised text is replaced in the original (`Normalised.original`): the stored
placeholder still replaces exactly what the user wrote. Every pattern here is linear (no nested quantifiers).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff"))
# Greek and Cyrillic letters drawn like Latin ones (Unicode's confusables, the unambiguous part)
LOOK_ALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y",
    "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W", "Һ": "H",
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x", "ε": "e",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",
})
_WORD = re.compile(r"\w+")
_LATIN = re.compile(r"[A-Za-zÀ-ɏ]")
# three or more groups of 2–6 digits joined by _ , * | · (with spaces around or not) or spaces; 9+ digits in all
_DIGIT_GROUPS = re.compile(r"(?<![\w.])\d{2,6}(?:[ \t]*[_,*|·][ \t]*\d{2,6}|[ \t]+\d{2,6}){2,7}(?![\w])")
_GROUP_SEP = re.compile(r"[ \t]*[_,*|·][ \t]*|[ \t]+")
_AT_WORD = re.compile(r"[ \t]*(?:\[|\(|\{|<)[ \t]*(?:at|@)[ \t]*(?:\]|\)|\}|>)[ \t]*", re.I)
_DOT_WORD = re.compile(r"[ \t]*(?:\[|\(|\{|<)[ \t]*(?:dot|\.)[ \t]*(?:\]|\)|\}|>)[ \t]*", re.I)
_PCT40 = re.compile(r"(?<=[\w.+-])%40(?=[\w-])")
_SPACED_AT = re.compile(r"(?<=[\w.+-])[ \t]+@[ \t]*(?=[\w-])|(?<=[\w.+-])@[ \t]+(?=[\w-])")
_DOMAIN = re.compile(r"@[\w-]+(?:[ \t]*\.[ \t]*[\w-]+)+")
_TLDS = ("com|net|org|edu|gov|mil|int|info|biz|name|io|co|uk|us|ca|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|is|pl|cz|sk|"
         "hu|ro|bg|gr|tr|pt|ie|au|nz|in|jp|kr|cn|hk|tw|sg|my|id|ph|vn|th|br|mx|ar|cl|ru|ua|za|ng|ke|gh|eg|ma|il|ae|sa|"
         "eu|me|app|dev|mail|email")
_SPACED_DOT = re.compile(rf"[ \t]*\.[ \t]*(?=(?:{_TLDS})(?![\w-]))", re.I)  # only before a top-level domain


@dataclass
class Normalised:
    text: str
    starts: list[int]  # for each character of `text`, where its source starts in the original
    ends: list[int]  # and where it ends (exclusive)
    source: str

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that characters [start, end) of the normalised text came from."""
        if start >= end:
            at = self.starts[start] if start < len(self.starts) else len(self.source)
            return at, at
        return self.starts[start], self.ends[end - 1]


def _sub(n: Normalised, pattern: re.Pattern, repl) -> Normalised:
    """Apply `pattern.sub(repl, …)`; each replacement's characters all map to the whole match's original span."""
    text, starts, ends, at = [], [], [], 0
    for m in pattern.finditer(n.text):
        new = repl(m) if callable(repl) else repl
        if new == m.group(0):
            continue
        text.append(n.text[at:m.start()])
        starts += n.starts[at:m.start()]
        ends += n.ends[at:m.start()]
        a, b = n.original(m.start(), m.end())
        text.append(new)
        starts += [a] * len(new)
        ends += [b] * len(new)
        at = m.end()
    if not text:
        return n
    text.append(n.text[at:])
    starts += n.starts[at:]
    ends += n.ends[at:]
    return Normalised("".join(text), starts, ends, n.source)


def _look_alikes(m: re.Match) -> str:
    word = m.group(0)
    mapped = word.translate(LOOK_ALIKES)
    return mapped if mapped != word and _LATIN.search(word) else word


def normalise(text: str) -> Normalised:
    n = Normalised(text, list(range(len(text))), list(range(1, len(text) + 1)), text)
    if any(ord(c) in INVISIBLE or unicodedata.category(c) == "Cf" for c in text):
        keep = [i for i, c in enumerate(text) if ord(c) not in INVISIBLE and unicodedata.category(c) != "Cf"]
        n = Normalised("".join(text[i] for i in keep), keep, [i + 1 for i in keep], text)
    if not text.isascii():
        n = _sub(n, _WORD, _look_alikes)
    n = _sub(n, _DIGIT_GROUPS, lambda m: _GROUP_SEP.sub(" ", m.group(0)) if sum(c.isdigit() for c in m.group(0)) >= 9
             else m.group(0))
    if "@" in n.text or "%40" in n.text or "at" in n.text.lower():
        n = _sub(n, _AT_WORD, "@")
        n = _sub(n, _PCT40, "@")
        n = _sub(n, _SPACED_AT, "@")
        if "@" in n.text:
            n = _sub(n, _DOT_WORD, ".")
            n = _sub(n, _DOMAIN, lambda m: _SPACED_DOT.sub(".", m.group(0)))
    return n
