"""A public base model, built once from public labelled text only (`candor pretrain-public`).

Multi-task, in Candor's one training loop: the byte-level BPE tokenizer is fitted on all the public text,
the LM is pre-trained on it, then the intent head is trained on every source's own labels at once (each
label prefixed by its source, so labels of different datasets never merge). The result is an ordinary
Candor model directory; a bot names it as `model.base` (`candor train --base DIR`) and fine-tunes from it
with a fresh intent head. Under DP that is the point: the base saw no private data, so it needs no
guarantee, and DP fine-tuning starts from features learnt on far more text than the private set.

Sources (`KIND:PATH`):
    sgd:FILE        Schema-Guided Dialogue user turns (`split,dialogue_id,turn,service,intent,text` CSV, may be
                    gzipped); only the train and dev splits are read (the test split is kept for out-of-scope
                    tests), labels are the turn's active intent (`NONE`: small talk, thanks, goodbyes)
    banking77:DIR   BANKING77's train.csv (text, category); never test.csv
    csv:FILE        any CSV with `text` and `intent` columns (rows with `split: test` are left out)
"""
from __future__ import annotations

import csv
import gzip
import io
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from bot import card as cards
from bot.importers import DEFAULT_FALLBACK
from bot.spec import BotSpec, Example, Intent, normalize

KINDS = ("sgd", "banking77", "csv")


@dataclass(frozen=True)
class Source:
    kind: str
    path: Path

    @property
    def name(self) -> str:
        return self.kind if self.kind != "csv" else self.path.stem

    @property
    def file(self) -> Path:
        """The file read: BANKING77's train.csv inside its folder, else the path itself."""
        return self.path / "train.csv" if self.kind == "banking77" else self.path

    def describe(self) -> str:
        return f"{self.kind}:{self.path}" + (" (train and dev splits)" if self.kind == "sgd" else
                                             " (train.csv)" if self.kind == "banking77" else "")


def parse_source(text: str) -> Source:
    kind, sep, path = text.partition(":")
    if not sep or kind not in KINDS or not path:
        raise ValueError(f"public source {text!r}: expected KIND:PATH with KIND one of {', '.join(KINDS)}")
    src = Source(kind, Path(path))
    if not src.file.is_file():
        raise FileNotFoundError(f"public source {text!r}: {src.file} is not a file")
    return src


def _rows(path: Path) -> list[dict]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


NEEDS = {"sgd": ("split", "intent", "text"), "banking77": ("text", "category"), "csv": ("text", "intent")}


def labelled(src: Source) -> list[tuple[str, str]]:
    """(text, label) pairs of one source, labels prefixed by the source's name. Rows of a test split are
    dropped (SGD's, and a CSV's `split: test` rows): they stay unseen for out-of-scope tests."""
    path = src.file
    rows = _rows(path)
    missing = [c for c in NEEDS[src.kind] if rows and c not in rows[0]]
    if missing or not rows:
        raise ValueError(f"{path}: line 1: a {src.kind} source needs columns {', '.join(NEEDS[src.kind])}"
                         + (f"; missing {', '.join(missing)}" if missing else "; the file has no rows"))
    rows = [r for r in rows if (r.get("split") or "train").strip().lower() != "test"]
    label = "category" if src.kind == "banking77" else "intent"
    pairs = [(t.strip(), f"{src.name}:{y.strip()}") for t, y in ((r["text"] or "", r[label] or "") for r in rows)
             if t.strip() and y.strip()]
    if not pairs:
        raise ValueError(f"{path}: no labelled rows outside a test split")
    return pairs


def public_spec(sources: list[Source], max_per_label: int = 1500, seed: int = 0) -> BotSpec:
    """A bot made of public labelled text: one record per distinct text (normalised) with its most frequent
    label, at most `max_per_label` texts per label (a seeded sample; the rarest labels keep all theirs)."""
    votes: dict[str, Counter] = defaultdict(Counter)
    first: dict[str, str] = {}
    for src in sources:
        for text, label in labelled(src):
            key = normalize(text)
            votes[key][label] += 1
            first.setdefault(key, text)
    by_label: dict[str, list[str]] = defaultdict(list)
    for key in sorted(votes):
        by_label[votes[key].most_common(1)[0][0]].append(first[key])
    rng = random.Random(seed)
    intents = {}
    for label in sorted(by_label):
        texts = by_label[label]
        if max_per_label and len(texts) > max_per_label:
            texts = rng.sample(texts, max_per_label)
        intents[label] = Intent(label, [Example(t, label) for t in texts])
    spec = BotSpec(name="public_base", intents=intents, fallback=DEFAULT_FALLBACK,
                   description="Public base: " + "; ".join(s.describe() for s in sources))
    spec.training.outlier_weight = 0.0  # every text here has a label
    return spec


def pretrain_public(sources: list[Source], out: str | Path, max_per_label: int = 1500, model: dict | None = None,
                    training: dict | None = None, device: str | None = None, progress: bool = True, log=print) -> Path:
    """Build and save the base; `model` and `training` override ModelSettings / TrainSettings fields (defaults:
    the offline default model, 1 LM epoch, 3 intent epochs, 3% of the texts for validation)."""
    from bot.train import train

    training = {"epochs": 3, "pretrain_epochs": 1, "val_fraction": 0.03, "seed": 0, **(training or {})}
    if max_per_label < 0:
        raise ValueError("public base: max_per_label must be 0 (all) or more")
    spec = public_spec(sources, max_per_label, training["seed"])
    for section, values in (("model", model or {}), ("training", training)):
        for key, value in values.items():
            if not hasattr(getattr(spec, section), key):
                raise ValueError(f"public base: unknown {section} setting {key!r}")
            setattr(getattr(spec, section), key, value)
    n = len(spec.examples)
    log(f"public base: {n} texts, {len(spec.intents)} labels from {', '.join(s.describe() for s in sources)}")
    train(spec, out, device=device, progress=progress, log=log)
    cards.update(out, public_base={
        "sources": [s.describe() for s in sources], "texts": n, "labels": len(spec.intents),
        "max_per_label": max_per_label,
        "use": "model.base of a bot (candor train --base DIR); public data only, so it needs no privacy guarantee",
    })
    return Path(out)


def base_provenance(base: str) -> str:
    """What a `model.base` was trained on, as its card says (the DP card names it: the guarantee assumes the
    base saw no private data)."""
    from bot.model import read_card

    card = read_card(base) if Path(base).is_dir() else {}
    if "public_base" in card:
        return f"public base {base} (candor pretrain-public: {'; '.join(card['public_base']['sources'])})"
    if card:
        inner = card.get("training", {}).get("base", "scratch")
        return (f"Candor model {base}, trained on bot '{card['bot']['name']}'"
                + (f" from {base_provenance(inner)}" if inner != "scratch" else "")
                + "; the guarantee assumes it saw no private data")
    return f"pretrained base {base}"
