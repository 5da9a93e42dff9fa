"""Build the offline NLTK data Candor ships in safety/data/nltk/ (run once; the output is committed).

- corpora/wordnet.zip: Princeton WordNet 3.0 as Debian packages it (`wordnet-base`), the files NLTK's
  WordNet reader opens, plus the `lexnames` file it also needs (written from the lexnames(5WN) table
  in the same package), `index.sense` from `wordnet-sense-index` (NLTK maps sense keys with it on
  load), and the WordNet licence.
- corpora/stopwords/english: the Snowball project's English stop list, as Debian packages it
  (`liblingua-stopwords-perl`, Lingua::StopWords::EN).

    python scripts/build_nltk_data.py            # downloads the .debs with `apt-get download`
"""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "safety" / "data" / "nltk"
WORDNET_FILES = ["data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv", "index.noun",
                 "index.verb", "index.sense", "adj.exc", "adv.exc", "noun.exc", "verb.exc"]
CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
SNOWBALL_LICENCE = """The Snowball project's English stop word list (https://snowballstem.org), as distributed in
Debian's liblingua-stopwords-perl 0.12 (Lingua::StopWords::EN: "The stoplists supplied by this
module were created as part of the Snowball project").

Snowball is released under the BSD 3-Clause licence:

Copyright (c) 2001, Dr Martin Porter
Copyright (c) 2004,2005, Richard Boulton
All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

  1. Redistributions of source code must retain the above copyright notice, this list of
     conditions and the following disclaimer.
  2. Redistributions in binary form must reproduce the above copyright notice, this list of
     conditions and the following disclaimer in the documentation and/or other materials
     provided with the distribution.
  3. Neither the name of the Snowball project nor the names of its contributors may be used to
     endorse or promote products derived from this software without specific prior written
     permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT OWNER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def extract(debs: Path) -> Path:
    root = debs / "x"
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def lexnames(root: Path) -> str:
    man = gzip.open(root / "usr/share/man/man5/lexnames.5WN.gz", "rt", encoding="utf-8").read()
    rows = re.findall(r"^(\d\d)\t(\w+\.\w+)\s*\t", man, flags=re.M)
    assert [int(n) for n, _ in rows] == list(range(45)), rows
    return "".join(f"{n}\t{name}\t{CATEGORY[name.split('.')[0]]}\n" for n, name in rows)


def stopwords(root: Path) -> list[str]:
    pm = (root / "usr/share/perl5/Lingua/StopWords/EN.pm").read_text(encoding="utf-8")
    words = re.search(r"return qw\((.*?)\);", pm, flags=re.S).group(1).split()
    assert len(words) == 174 and words[:3] == ["i", "me", "my"], words[:5]
    return words


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        debs = Path(tmp)
        subprocess.run(["apt-get", "download", "wordnet-base", "wordnet-sense-index", "liblingua-stopwords-perl"], cwd=debs, check=True)
        root = extract(debs)
        wn = root / "usr/share/wordnet"
        licence = (root / "usr/share/doc/wordnet-base/copyright").read_text(encoding="utf-8")
        licence = licence.split("License: WordNet3.0", 1)[1].split("Files: debian/*")[0]
        licence = "\n".join(line[1:] if line.startswith(" ") else line for line in licence.splitlines())
        licence = licence.replace("\n.\n", "\n\n").strip() + "\n"
        (OUT / "corpora").mkdir(parents=True, exist_ok=True)
        (OUT / "LICENSE-wordnet.txt").write_text("WordNet 3.0 (Princeton University), from Debian's wordnet-base "
                                                  "1:3.0-37.\n\n" + licence, encoding="utf-8")
        with zipfile.ZipFile(OUT / "corpora" / "wordnet.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for name, data in [*((n, (wn / n).read_bytes()) for n in WORDNET_FILES),
                               ("lexnames", lexnames(root).encode()), ("LICENSE", licence.encode())]:
                z.writestr(zipfile.ZipInfo(f"wordnet/{name}", date_time=(2006, 12, 6, 0, 0, 0)), data,
                           compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        (OUT / "corpora" / "stopwords").mkdir(exist_ok=True)
        (OUT / "corpora" / "stopwords" / "english").write_text("\n".join(stopwords(root)) + "\n", encoding="utf-8")
        (OUT / "LICENSE-stopwords.txt").write_text(SNOWBALL_LICENCE, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
