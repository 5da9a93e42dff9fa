"""Word recognition before the model (Pruthi et al., 2019): a misspelt word becomes the known word it is closest to.

Part of the served input path (`safety.guard.read_message`, after redaction), so the model, its explanations, the
attacks and the audit log all read the corrected text, and training reads its examples the same way
(`safety.guard.served_text`). The lookup is symspellpy's (MIT) with its bundled English frequency dictionary
(82,765 words, from public text), plus `safety/data/spelling_words.txt` (chat spellings such as "dont" and
service/shop terms such as "signup"; public, authored here, never the bot's examples, so the same under DP).

A word is corrected only when all of these hold, so what is left alone is left byte for byte:
- it is letters only (a word with an apostrophe is left alone), not touching a digit, `<`/`>` (a redaction placeholder such as
  `<PERSON>`), markup or an address (`=`, `/`, `@`, `_`, `-`, `.` inside a name), or another word character; at least
  `MIN_LENGTH` letters;
- lower case, or capitalised as the first word of the message (a capitalised word later on is likely a name, a
  word in capitals an acronym);
- it is in neither word list, and the closest known word is within 1 edit (2 for words of 7 letters or more;
  Damerau-Levenshtein: a swap of neighbours is one edit), the most frequent of those wins; none: kept.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

MIN_LENGTH = 4
EXTRA_WORDS = Path(__file__).resolve().parent / "data" / "spelling_words.txt"
# a word not part of a placeholder, markup, an address, a path or a name with digits: no word character, < > ' = / @
# _ - \ & # next to it, and no "." before it or before a word character after it ("example.com", "v1.2")
_WORD = re.compile(r"(?<![\w<>'=/@\\&#.-])[A-Za-z]+(?:'[A-Za-z]+)?(?![\w<>'=/@\\&#-]|\.\w)")


class Speller:
    def __init__(self, extra_words: list[str] = ()):
        import importlib.resources

        from symspellpy import SymSpell

        self.sym = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
        dictionary = importlib.resources.files("symspellpy") / "frequency_dictionary_en_82_765.txt"
        with importlib.resources.as_file(dictionary) as path:
            if not self.sym.load_dictionary(str(path), term_index=0, count_index=1, encoding="utf-8"):
                raise RuntimeError(f"symspellpy's dictionary {path} could not be read")
        self.known = set(self.sym.words) | {w.lower() for w in extra_words}

    def correction(self, word: str, first: bool) -> str | None:
        """The known word `word` is taken to mean, or None to leave it as it is."""
        from symspellpy import Verbosity

        if len(word) < MIN_LENGTH or "'" in word:
            return None
        if not (word.islower() or first and word[0].isupper() and word[1:].islower()):
            return None
        lower = word.lower()
        if lower in self.known:
            return None
        found = self.sym.lookup(lower, Verbosity.TOP, max_edit_distance=2 if len(word) >= 7 else 1)
        if not found or found[0].term == lower:
            return None
        term = found[0].term
        return term.capitalize() if word[0].isupper() else term

    def correct(self, text: str) -> str:
        """`text` with each misspelt word replaced (see the module docstring); everything else unchanged."""
        out, last = [], 0
        for m in _WORD.finditer(text):
            fix = self.correction(m.group(), first=not text[:m.start()].strip())
            if fix is not None:
                out += [text[last:m.start()], fix]
                last = m.end()
        return "".join(out) + text[last:] if out else text


@functools.cache
def speller() -> Speller:
    """The one speller of this process (about 3 s and 130 MB to build, once)."""
    words = [w.strip() for w in EXTRA_WORDS.read_text(encoding="utf-8").splitlines()]
    return Speller([w for w in words if w and not w.startswith("#")])


def correct(text: str) -> str:
    return speller().correct(text)
