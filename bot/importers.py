"""Turn other formats into a BotSpec: plain CSV, BANKING77, Bitext, Schema-Guided Dialogue, Rasa NLU."""
from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import yaml

from bot.spec import OUT_OF_SCOPE, BotFileError, BotSpec, Example, Intent, Problem, Turn, normalize

DEFAULT_FALLBACK = "Sorry, I'm not sure I understood. Could you rephrase that?"
OOS_LABELS = {"out_of_scope", "oos", "out-of-scope"}  # rows that belong to no intent (bot/spec.py: OUT_OF_SCOPE)


def is_oos(label: str) -> bool:
    return label.strip().lower() in OOS_LABELS


def _spec(name: str, by_intent: dict[str, list[str]], responses: dict[str, list[str]] | None = None,
          source: str = "", **kw) -> BotSpec:
    """`source`: where responses taken from data rows came from (they are private under DP; bot/spec.py)."""
    responses = responses or {}
    intents = {
        n: Intent(n, [Example(t, n) for t in texts], list(responses.get(n, [])),
                  responses_source=source if responses.get(n) else "")
        for n, texts in sorted(by_intent.items())
    }
    return BotSpec(name=name, intents=intents, fallback=kw.pop("fallback", DEFAULT_FALLBACK), **kw)


def _read_csv(path: Path, text_cols=("text",), intent_cols=("intent",)) -> list[tuple[int, dict]]:
    """Rows with their starting line numbers; header names matched case-insensitively."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BotFileError([Problem(str(path), None, "error", f"not valid UTF-8: {e.reason} at byte {e.start}")]) from None
    reader = csv.DictReader(raw.splitlines(keepends=True))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [c for c in (text_cols[0], intent_cols[0]) if not any(x in header for x in (text_cols if c == text_cols[0] else intent_cols))]
    if missing:
        raise BotFileError([Problem(str(path), 1, "error", f"CSV header must have columns {text_cols[0]!r} and {intent_cols[0]!r}; found {header}")])
    rows = []
    for row in reader:
        rows.append((reader.line_num, row))
    return rows


def _pick(row: dict, names) -> str:
    for n in names:
        if row.get(n) is not None:
            return row[n].strip()
    return ""


def from_csv(path: str | Path, name: str | None = None) -> BotSpec:
    """CSV with `text,intent` (also `category`/`label`), optional `response` and `split` (`test` rows become the
    test set). Rows labelled `out_of_scope` (or `oos`) belong to no intent: out-of-scope training examples, or
    out-of-scope test questions on `test` rows."""
    path = Path(path)
    text_cols, intent_cols = ("text", "utterance", "instruction"), ("intent", "category", "label")
    by_intent, responses, problems = defaultdict(list), defaultdict(list), []
    oos, test = [], []
    for line, row in _read_csv(path, text_cols, intent_cols):
        text, intent = _pick(row, text_cols), _pick(row, intent_cols)
        if not text or not intent:
            problems.append(Problem(str(path), line, "error", "row has an empty text or intent"))
            continue
        split = (row.get("split") or "").strip().lower()
        if split not in ("", "train", "test"):
            problems.append(Problem(str(path), line, "error", f"split must be 'train', 'test' or empty, got {split!r}"))
            continue
        if split == "test":
            test.append(Example(text, OUT_OF_SCOPE if is_oos(intent) else intent, line))
            continue
        if is_oos(intent):
            oos.append(Example(text, OUT_OF_SCOPE, line))
            continue
        by_intent[intent].append(text)
        resp = (row.get("response") or "").strip()
        if resp and resp not in responses[intent]:
            responses[intent].append(resp)
    if problems:
        raise BotFileError(problems)
    return _spec(name or path.stem, by_intent, responses, source=f"response column of {path.name}",
                 out_of_scope=list({normalize(e.text): e for e in oos}.values()), test=test)


def from_banking77(folder: str | Path, name: str = "banking77") -> BotSpec:
    """BANKING77: train.csv → examples, test.csv → test set. It has no responses."""
    folder = Path(folder)
    spec = from_csv(folder / "train.csv", name)
    test = from_csv(folder / "test.csv")
    train_texts = {e.text for e in spec.examples}
    official = [e for i in test.intents.values() for e in i.examples] + test.out_of_scope
    spec.test = [e for e in official if e.text not in train_texts]
    spec.description = (f"BANKING77 (PolyAI, CC BY 4.0): 77 online-banking intents. {len(official) - len(spec.test)} "
                        "official test texts that also occur in train.csv (after trimming whitespace) were left out.")
    return spec


_BITEXT_SLOT = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


_NUMBER = re.compile(r"\b\d{5,}\b")  # order/invoice numbers copied from the request into a reply


def bitext_placeholder(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def from_bitext(path: str | Path, name: str = "bitext_support", responses_per_intent: int = 5,
                test_fraction: float = 0.1, seed: int = 0) -> BotSpec:
    """Bitext customer-support CSV (instruction, intent, response); each test example keeps its own row's
    response as a held-out reference reply.

    Keeps every instruction as an example (a stratified `test_fraction` goes to the test set) and
    `responses_per_intent` generic replies per intent, taken from the training rows only (a test row's reply is
    its held-out reference): ones tied to no entity first, then shortest, with `{{Slot Name}}` rewritten to
    `{slot_name}` and, in replies to a request that named an entity, long numbers rewritten to `{order_number}`.
    """
    path = Path(path)
    rows = _read_csv(path, ("instruction",), ("intent",))
    by_intent, candidates, reply_of = defaultdict(list), defaultdict(list), {}
    for _, row in rows:
        by_intent[row["intent"].strip()].append(row["instruction"].strip())
        has_entity = bool((row.get("entity_type") or "").strip())
        candidates[row["intent"].strip()].append((normalize(row["instruction"]), has_entity, row["response"].strip()))
        reply_of.setdefault(normalize(row["instruction"]), (has_entity, row["response"].strip()))

    def template(has_entity: bool, r: str) -> str:
        return _BITEXT_SLOT.sub(lambda m: "{" + bitext_placeholder(m.group(1)) + "}",
                                _NUMBER.sub("{order_number}", r) if has_entity else r)

    rng = random.Random(seed)
    responses, test = {}, []
    for intent, texts in by_intent.items():
        texts = list({normalize(t): t for t in texts}.values())
        rng.shuffle(texts)
        n_test = int(round(len(texts) * test_fraction))
        test += [Example(t, intent, reply=template(*reply_of[normalize(t)])) for t in texts[:n_test]]
        held_out = {normalize(t) for t in texts[:n_test]}
        by_intent[intent] = texts[n_test:]
        pool = sorted({(e, r) for key, e, r in candidates[intent] if key not in held_out},
                      key=lambda c: (c[0], len(c[1]) > 700, len(_BITEXT_SLOT.findall(c[1])), len(c[1]), c[1]))
        responses[intent] = [template(has_entity, r) for has_entity, r in pool[:responses_per_intent]]
    spec = _spec(name, by_intent, responses, source=f"response column of {path.name}")
    spec.test = test
    return spec


def from_sgd(folders: list[str | Path], name: str = "sgd", services: list[str] | None = None) -> BotSpec:
    """Schema-Guided Dialogue JSON. User turns that state an intent (INFORM_INTENT) become
    examples, the system's next turn a response; whole dialogues are kept for context."""
    by_intent, responses, dialogues = defaultdict(list), defaultdict(list), []
    files = []
    for folder in map(Path, folders):
        files += sorted(folder.glob("dialogues_*.json")) if folder.is_dir() else [folder]
    if not files:
        raise BotFileError([Problem(str(folders), None, "error", "no dialogues_*.json files found")])
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BotFileError([Problem(str(file), e.lineno, "error", f"invalid JSON: {e.msg}")]) from None
        for dialogue in data:
            if services and not set(dialogue.get("services", [])) & set(services):
                continue
            turns, pending, intent = [], None, None
            for turn in dialogue["turns"]:
                if turn["speaker"] == "USER":
                    pending, stated = turn["utterance"].strip(), None
                    for frame in turn["frames"]:
                        if services and frame["service"] not in services:
                            continue
                        active = frame.get("state", {}).get("active_intent", "NONE")
                        if active != "NONE":
                            intent = active
                        if any(a["act"] == "INFORM_INTENT" for a in frame["actions"]) and active != "NONE":
                            stated = active
                    if stated:
                        by_intent[stated].append(pending)
                    user_intent = stated
                elif pending is not None:
                    reply = turn["utterance"].strip()
                    turns.append(Turn(pending, reply, user_intent or intent))
                    if user_intent and reply not in responses[user_intent] and len(responses[user_intent]) < 10:
                        responses[user_intent].append(reply)
                    pending = None
            if turns and any(t.intent for t in turns):
                dialogues.append(turns)
    by_intent = {k: list(dict.fromkeys(v)) for k, v in by_intent.items()}
    intents = set(by_intent)
    for d in dialogues:
        for t in d:
            if t.intent not in intents:
                t.intent = None
    return _spec(name, by_intent, responses, source="system turns of Schema-Guided Dialogue", dialogues=dialogues)


_RASA_ENTITY = re.compile(r"\[([^\]]+)\](\([^)]*\)|\{[^}]*\})")


def from_rasa(nlu_path: str | Path, domain_path: str | Path | None = None, name: str | None = None) -> BotSpec:
    """Rasa 3.x NLU YAML (`nlu: - intent: x, examples: | - ...`); responses from an optional domain.yml
    (`utter_<intent>`). Entity markup `[Berlin](city)` is reduced to its text."""
    nlu_path = Path(nlu_path)
    doc = yaml.safe_load(nlu_path.read_text(encoding="utf-8")) or {}
    by_intent, oos = defaultdict(list), []
    for block in doc.get("nlu") or []:
        if "intent" not in block:
            continue  # synonyms, regexes, lookups
        examples = block.get("examples") or ""
        for line in examples.splitlines() if isinstance(examples, str) else examples:
            line = line.strip()
            if line.startswith("- "):
                line = line[2:]
            line = _RASA_ENTITY.sub(r"\1", line).strip()
            if line and is_oos(str(block["intent"])):
                oos.append(Example(line, OUT_OF_SCOPE))
            elif line:
                by_intent[block["intent"]].append(line)
    if not by_intent:
        raise BotFileError([Problem(str(nlu_path), None, "error", "no 'nlu: - intent:' blocks found (is this Rasa 3.x NLU YAML?)")])
    responses = defaultdict(list)
    fallback = DEFAULT_FALLBACK
    if domain_path:
        domain = yaml.safe_load(Path(domain_path).read_text(encoding="utf-8")) or {}
        for key, variants in (domain.get("responses") or {}).items():
            texts = [v["text"] for v in variants if isinstance(v, dict) and v.get("text")]
            if key == "utter_default" and texts:
                fallback = texts[0]
            elif key.startswith("utter_") and key[6:] in by_intent:
                responses[key[6:]] += texts
    return _spec(name or nlu_path.stem, by_intent, responses, fallback=fallback, out_of_scope=oos)


IMPORTERS = {"csv": from_csv, "banking77": from_banking77, "bitext": from_bitext, "sgd": from_sgd, "rasa": from_rasa}
