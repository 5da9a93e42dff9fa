"""The bot file: one YAML document describing intents, responses and settings.

`load_bot(path)` parses and validates it; every problem carries file, line and message.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

OUT_OF_SCOPE = "out_of_scope"
# Training views that `robustness:` may ask for (safety/augment.py and safety/recipes.py implement them).
AUGMENTERS = ("charswap", "typo", "deletion", "swap", "synonym", "eda")
ADVERSARIAL_RECIPES = ("deepwordbug", "pruthi", "pwws")


class Located(str):
    """A string that remembers the line it came from."""

    line: int | None = None


@dataclass
class Problem:
    file: str
    line: int | None
    severity: str  # "error" or "warning"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


class BotFileError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Example:
    text: str
    intent: str
    line: int | None = None
    reply: str | None = None  # test examples only: a held-out reference reply (`candor eval --replies`)


@dataclass
class Turn:
    user: str
    bot: str
    intent: str | None = None


@dataclass
class Intent:
    name: str
    examples: list[Example] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    line: int | None = None
    responses_source: str = ""  # "" = authored in the bot file; else where an importer took them from (data rows)


# In a turn's attributions, the earlier user turns the classifier read (`Settings.classify_context`), scored as one
# item before the message's words.
EARLIER = "[earlier turns]"


@dataclass
class Settings:
    confidence_threshold: float = 0.3  # Rasa's FallbackClassifier default
    ambiguity_threshold: float = 0.1
    response_mode: str = "template"  # "template" or "generate"
    context_turns: int = 3
    max_reply_tokens: int = 96
    # Earlier user turns the intent classifier reads before the message (0: each message alone, the default: on
    # BANKING77 reading one cost 3.9 points and 1.8x the training time; the demo bot reads one: BENCHMARKS.md
    # "Follow-ups"). A model whose card has no such setting reads none (bot.dialogue.Bot).
    classify_context: int = 0
    # The distance rule (bot/neighbours.py): after training, the bot falls back as "unfamiliar" on a message farther
    # from the training examples than this share of the validation questions are; 0 turns it off (in training: no
    # index is saved; on a trained model's card: its index is not used). DP models never get one.
    distance_quantile: float = 0.99


@dataclass
class ModelSettings:
    base: str = "scratch"  # "scratch", a hub id or a local directory
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    vocab_size: int = 4096
    max_length: int = 256
    dropout: float = 0.1
    # Hashed character n-grams of the message's words beside GPT-2's features in the intent head (bot/ngrams.py);
    # 0 = none (GPT-2's features alone, as models before them)
    ngram_buckets: int = 32768


@dataclass
class TrainSettings:
    seed: int = 0
    epochs: int = 12
    pretrain_epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    patience: int = 3
    checkpoint_every: int = 200
    reply_weight: float = 0.5
    reply_batch_size: int = 8
    word_dropout: float = 0.1  # chance of dropping (and of inserting) a word in a training utterance's view
    # Outlier exposure: public text that belongs to no intent, trained toward a uniform intent distribution so
    # that unfamiliar questions get a low confidence. "" = the bundled public sample (bot/demo/SOURCE.md),
    # "none" = no public text, else a .txt/.csv/bot file. The bot file's own `out_of_scope:` examples are used
    # too, whenever outlier exposure is on (outlier_weight > 0; not yet under DP).
    outlier_corpus: str = ""
    outlier_weight: float = 0.5  # weight of the outlier loss; 0 turns outlier exposure off
    # Fine-tuning validates, keeps and ships an exponential moving average of the weights (Polyak averaging) with
    # this decay per step (warmed up as (1 + t) / (10 + t) over the first steps); 0 ships the last weights.
    weight_average: float = 0.0
    # Public text the offline default's LM also pre-trains on, beside the bot's own text (the tokenizer is still
    # fitted on the bot's text alone): "" = none, else a .txt/.csv/bot file
    pretrain_corpus: str = ""
    label_smoothing: float = 0.0  # of the intent cross-entropy (0: one-hot targets)
    # R-drop (Liang et al., 2021): each intent batch goes through the model twice (two dropout masks), and this
    # weights the symmetric KL divergence between the two intent distributions (0: one pass, no such term)
    rdrop: float = 0.0
    # "bf16": training's forward passes run under bfloat16 autocast (about 1.5x faster on a CPU with AVX512-BF16
    # or AMX, and on GPUs); the weights, the optimizer and the shipped model stay float32. "fp32": no autocast.
    # "auto": bf16 where the device has native bfloat16, else fp32 (and fp32 under DP); the card says which ran.
    precision: str = "fp32"


@dataclass
class PrivacySettings:
    """DP-SGD (applied by safety/privacy.py). The guarantee covers the training utterances."""

    enabled: bool = False
    target_epsilon: float = 8.0
    delta: float = 0.0  # 0: pick one below 1/N
    max_grad_norm: float = 1.0
    logical_batch: int = 256
    physical_batch: int = 32
    public_corpus: str = ""  # text/CSV/bot file the offline default may pre-train on ("" = bundled BANKING77 text)
    train_blocks: int = -1  # top transformer blocks trained privately (+ heads, final norm); -1: all, embeddings too
    lora_rank: int = 0  # > 0: train peft LoRA adapters of this rank (+ intent head, final norm) instead of blocks
    count_epsilon: float = 0.05  # part of target_epsilon spent on the one noisy count of training records
    imported_responses: str = "private"  # responses imported from data: "private" (not used, not shipped) or "public"
    head_init: str = "prototype"  # the intent head (and n-gram rows) from noisy per-intent prototypes (safety/prototypes.py); "random"
    prototype_share: float = 0.5  # of the ε left after the count, the share the prototypes alone would spend
    ngram_share: float = 1.0  # the prototypes' vector: this share of a record's length on its n-grams, the rest on GPT-2's features
    standin: list[str] = field(default_factory=list)  # labelled public CSVs (text, intent) of the expected-accuracy estimate ([] = the bundled BANKING77 and SGD intents)
    epochs: int = 0  # DP-SGD epochs after the prototypes (0: the prototypes are the whole private step); training.epochs is non-private training's


@dataclass
class RobustnessSettings:
    """Views of a training record for robustness (applied by safety/): each replaces the record for one step."""

    augment: list[str] = field(default_factory=list)  # TextAttack augmenters, one picked per augmented view
    augment_share: float = 0.3  # chance that a record's view this step is an augmented one
    adversarial: bool = False  # adversarial training: attack training records against the current model
    adversarial_recipe: str = "deepwordbug"
    adversarial_share: float = 0.25  # share of the training records attacked at the start of each adversarial epoch
    adversarial_clean_epochs: int = 2  # clean epochs before the first adversarial one
    adversarial_query_budget: int = 200  # model queries per attacked record at most


@dataclass
class BotSpec:
    name: str
    intents: dict[str, Intent]
    fallback: str
    settings: Settings = field(default_factory=Settings)
    model: ModelSettings = field(default_factory=ModelSettings)
    training: TrainSettings = field(default_factory=TrainSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    placeholders: dict[str, str] = field(default_factory=dict)
    test: list[Example] = field(default_factory=list)
    out_of_scope: list[Example] = field(default_factory=list)  # training examples that belong to no intent
    dialogues: list[list[Turn]] = field(default_factory=list)
    description: str = ""
    path: str = "<memory>"

    @property
    def examples(self) -> list[Example]:
        return [e for i in self.intents.values() for e in i.examples]

    def to_dict(self) -> dict:
        """Plain data for YAML/JSON (lines dropped)."""
        return {
            "name": self.name,
            "description": self.description,
            "fallback": self.fallback,
            "settings": dataclasses.asdict(self.settings),
            "model": dataclasses.asdict(self.model),
            "training": dataclasses.asdict(self.training),
            "privacy": dataclasses.asdict(self.privacy),
            "robustness": dataclasses.asdict(self.robustness),
            "placeholders": dict(self.placeholders),
            "intents": {
                n: {"examples": [str(e.text) for e in i.examples], "responses": [str(r) for r in i.responses],
                    **({"responses_source": i.responses_source} if i.responses_source else {})}
                for n, i in self.intents.items()
            },
            "out_of_scope": [str(e.text) for e in self.out_of_scope],
            "test": [{"text": str(e.text), "intent": str(e.intent), **({"reply": str(e.reply)} if e.reply else {})}
                     for e in self.test],
            "dialogues": [[dataclasses.asdict(t) for t in d] for d in self.dialogues],
        }


def dump_bot(spec: BotSpec, path: str | Path) -> None:
    """Write a bot file atomically."""
    from bot.io import atomic_write_text

    data = spec.to_dict()
    for key in ("out_of_scope", "test", "dialogues", "placeholders", "description"):
        if not data[key]:
            del data[key]
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))


# ---------------------------------------------------------------- parsing


class _Loader(yaml.SafeLoader):
    pass


def _construct_str(loader, node):
    s = Located(loader.construct_scalar(node))
    s.line = node.start_mark.line + 1
    return s


def _construct_map(loader, node):
    loader.flatten_mapping(node)
    out, seen = {}, {}
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if key in seen:
            loader.duplicate_keys.append((key, knode.start_mark.line + 1, seen[key]))
            out.pop(key)  # keep the later key object, so its line is reported
        seen[key] = knode.start_mark.line + 1
        out[key] = loader.construct_object(vnode, deep=True)
    return out


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _line(value) -> int | None:
    return getattr(value, "line", None)


def _check_encoding(raw: bytes, file: str, problems: list[Problem]) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        problems.append(Problem(file, line, "error", f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8"))
        text = raw.decode("utf-8", errors="replace")
    for n, row in enumerate(text.splitlines(), 1):
        if "\ufffd" in row:
            problems.append(Problem(file, n, "error", "contains U+FFFD replacement characters (text was decoded wrongly upstream)"))
        elif any(m in row for m in ("Ã©", "Ã¨", "â€™", "â€œ", "Ã¶", "Ã¼")):
            problems.append(Problem(file, n, "warning", "looks like mojibake (UTF-8 read as Latin-1), e.g. 'Ã©' or 'â€™'"))
        if any(ord(c) < 32 and c not in "\t\r" for c in row):
            problems.append(Problem(file, n, "error", "contains control characters"))
    return text


def _fill(cls, raw, where: str, file: str, problems: list[Problem], line: int | None):
    """Build a settings dataclass from a mapping, reporting unknown keys and bad types."""
    obj = cls()
    if raw is None:
        return obj
    if not isinstance(raw, dict):
        problems.append(Problem(file, line, "error", f"'{where}' must be a mapping"))
        return obj
    for key, value in raw.items():
        f = next((f for f in dataclasses.fields(cls) if f.name == key), None)
        if f is None:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            problems.append(Problem(file, _line(key), "error", f"unknown setting '{where}.{key}' (known: {known})"))
            continue
        default = getattr(obj, key)
        try:
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError
            elif isinstance(default, list):  # a YAML list or a comma-separated string of names
                items = value.split(",") if isinstance(value, str) else value
                if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                    raise ValueError
                value = [v.strip() for v in items if v.strip()]
            elif isinstance(default, str):
                value = str(value)
            elif isinstance(default, int):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
        except (TypeError, ValueError):
            problems.append(Problem(file, _line(key), "error", f"'{where}.{key}' must be a {type(default).__name__}, got {value!r}"))
            continue
        setattr(obj, key, value)
    return obj


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def parse_bot(text: str, file: str = "<memory>", problems: list[Problem] | None = None) -> BotSpec:
    """Parse bot YAML into a spec, appending every problem found to `problems`."""
    problems = [] if problems is None else problems
    loader = _Loader(text)
    loader.duplicate_keys = []
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problems.append(Problem(file, mark.line + 1 if mark else None, "error", f"invalid YAML: {getattr(e, 'problem', e)}"))
        doc = None
    finally:
        loader.dispose()
    for key, line, first in loader.duplicate_keys:
        problems.append(Problem(file, line, "error", f"duplicate key '{key}' (first defined on line {first}); the later one would silently win"))
    if not isinstance(doc, dict):
        if doc is not None:
            problems.append(Problem(file, 1, "error", "a bot file must be a YAML mapping with 'intents:'"))
        return BotSpec(name="invalid", intents={}, fallback="", path=file)

    known = {"name", "description", "fallback", "settings", "model", "training", "privacy", "robustness",
             "placeholders", "intents", "out_of_scope", "test", "dialogues", "corrections"}
    for key in doc:
        if key not in known:
            problems.append(Problem(file, _line(key), "error", f"unknown top-level key '{key}' (known: {', '.join(sorted(known))})"))

    spec = BotSpec(
        name=str(doc.get("name") or Path(file).stem),
        description=str(doc.get("description") or ""),
        fallback=str(doc.get("fallback") or ""),
        intents={},
        settings=_fill(Settings, doc.get("settings"), "settings", file, problems, None),
        model=_fill(ModelSettings, doc.get("model"), "model", file, problems, None),
        training=_fill(TrainSettings, doc.get("training"), "training", file, problems, None),
        privacy=_fill(PrivacySettings, doc.get("privacy"), "privacy", file, problems, None),
        robustness=_fill(RobustnessSettings, doc.get("robustness"), "robustness", file, problems, None),
        placeholders={str(k): str(v) for k, v in (doc.get("placeholders") or {}).items()},
        path=file,
    )
    if not spec.fallback:
        problems.append(Problem(file, None, "error", "missing 'fallback': the reply used when the bot is unsure"))

    intents = doc.get("intents")
    if not isinstance(intents, dict) or not intents:
        problems.append(Problem(file, _line(next(iter(doc), None)), "error", "'intents' must be a non-empty mapping of intent name to examples/responses"))
        intents = {}
    for name, body in intents.items():
        intent = Intent(name=str(name), line=_line(name))
        body = body or {}
        if isinstance(body, list):  # shorthand: a list of examples
            body = {"examples": body}
        if not isinstance(body, dict):
            problems.append(Problem(file, _line(name), "error", f"intent '{name}' must map to 'examples' and 'responses'"))
            continue
        for key in body:
            if key not in ("examples", "responses", "responses_source"):
                problems.append(Problem(file, _line(key), "error", f"unknown key '{key}' in intent '{name}' (use 'examples', "
                                        "'responses' and, for responses taken from data, 'responses_source')"))
        intent.responses_source = str(body.get("responses_source") or "")
        for ex in body.get("examples") or []:
            if not isinstance(ex, str) or not ex.strip():
                problems.append(Problem(file, _line(ex) or _line(name), "error", f"intent '{name}': empty or non-text example {ex!r}"))
                continue
            intent.examples.append(Example(str(ex).strip(), intent.name, _line(ex)))
        for r in body.get("responses") or []:
            if not isinstance(r, str) or not r.strip():
                problems.append(Problem(file, _line(r) or _line(name), "error", f"intent '{name}': empty response"))
                continue
            intent.responses.append(Located(r.strip()))
            intent.responses[-1].line = _line(r)
        spec.intents[intent.name] = intent

    oos = doc.get("out_of_scope") or []
    if not isinstance(oos, list):
        problems.append(Problem(file, _line(next((k for k in doc if k == "out_of_scope"), None)), "error",
                                "'out_of_scope' must be a list of example questions that belong to no intent"))
        oos = []
    for ex in oos:
        if not isinstance(ex, str) or not ex.strip():
            problems.append(Problem(file, _line(ex), "error", f"out_of_scope: empty or non-text example {ex!r}"))
            continue
        spec.out_of_scope.append(Example(str(ex).strip(), OUT_OF_SCOPE, _line(ex)))

    # Auditors' corrections of served turns (`candor data corrections`): training examples like the others, kept
    # apart with where each came from
    for item in doc.get("corrections") or []:
        if not isinstance(item, dict) or not str(item.get("text") or "").strip() or "intent" not in item:
            problems.append(Problem(file, _line(item), "error", "each corrections entry needs 'text' and 'intent'"))
            continue
        intent_name, text = str(item["intent"]), str(item["text"]).strip()
        if intent_name != OUT_OF_SCOPE and intent_name not in spec.intents:
            problems.append(Problem(file, _line(item["text"]), "error", f"corrections: unknown intent '{intent_name}' "
                                    f"(an intent of this bot file or {OUT_OF_SCOPE})"))
            continue
        example = Example(text, intent_name, _line(item["text"]))
        (spec.out_of_scope if intent_name == OUT_OF_SCOPE else spec.intents[intent_name].examples).append(example)

    for item in doc.get("test") or []:
        if not isinstance(item, dict) or "text" not in item or "intent" not in item:
            problems.append(Problem(file, _line(item), "error", "each test entry needs 'text' and 'intent'"))
            continue
        unknown = set(item) - {"text", "intent", "reply"}
        if unknown:
            problems.append(Problem(file, _line(item["text"]), "error", f"unknown key(s) in a test entry: "
                                    f"{', '.join(sorted(map(str, unknown)))} (use 'text', 'intent' and optionally 'reply')"))
        reply = str(item["reply"]).strip() if item.get("reply") else None
        spec.test.append(Example(str(item["text"]).strip(), str(item["intent"]), _line(item["text"]), reply))

    for d in doc.get("dialogues") or []:
        turns = []
        for t in d or []:
            if not isinstance(t, dict) or "user" not in t or "bot" not in t:
                problems.append(Problem(file, None, "error", "each dialogue turn needs 'user' and 'bot'"))
                continue
            turns.append(Turn(str(t["user"]), str(t["bot"]), str(t["intent"]) if t.get("intent") else None))
        spec.dialogues.append(turns)

    problems.extend(check_robustness(spec, doc.get("robustness")))
    problems.extend(validate(spec))
    return spec


def check_robustness(spec: BotSpec, raw=None, file: str | None = None) -> list[Problem]:
    """Problems with `robustness:` (lines from the raw YAML mapping when given)."""
    r, file = spec.robustness, file or spec.path
    lines = {str(k): _line(k) for k in raw} if isinstance(raw, dict) else {}
    out = [Problem(file, lines.get("augment"), "error", f"robustness.augment: unknown augmenter '{name}' (known: "
                                                        f"{', '.join(AUGMENTERS)})")
           for name in r.augment if name not in AUGMENTERS]
    if r.adversarial_recipe not in ADVERSARIAL_RECIPES:
        out.append(Problem(file, lines.get("adversarial_recipe"), "error",
                           f"robustness.adversarial_recipe: '{r.adversarial_recipe}' is not one of the offline "
                           f"recipes ({', '.join(ADVERSARIAL_RECIPES)}); see `candor attack --list`"))
    for key in ("augment_share", "adversarial_share"):
        if not 0 < getattr(r, key) <= 1:
            out.append(Problem(file, lines.get(key), "error", f"robustness.{key} must be above 0 and at most 1"))
    for key, low in (("adversarial_clean_epochs", 0), ("adversarial_query_budget", 1)):
        if getattr(r, key) < low:
            out.append(Problem(file, lines.get(key), "error", f"robustness.{key} must be at least {low}"))
    if r.adversarial and r.adversarial_clean_epochs >= spec.training.epochs:
        out.append(Problem(file, lines.get("adversarial_clean_epochs") or lines.get("adversarial"), "error",
                           f"adversarial training would never start: robustness.adversarial_clean_epochs "
                           f"({r.adversarial_clean_epochs}) must be below training.epochs ({spec.training.epochs})"))
    return out


def validate(spec: BotSpec) -> list[Problem]:
    """Semantic checks: empty/unknown intents, duplicates, leakage, bad settings."""
    f, out = spec.path, []
    s = spec.settings
    if not 0 <= s.confidence_threshold <= 1:
        out.append(Problem(f, None, "error", "settings.confidence_threshold must be between 0 and 1"))
    if not 0 <= s.ambiguity_threshold <= 1:
        out.append(Problem(f, None, "error", "settings.ambiguity_threshold must be between 0 and 1"))
    if s.response_mode not in ("template", "generate"):
        out.append(Problem(f, None, "error", f"settings.response_mode must be 'template' or 'generate', got '{s.response_mode}'"))
    if not 0 <= s.distance_quantile <= 1:
        out.append(Problem(f, None, "error", "settings.distance_quantile must be 0 (off) or a share of the validation "
                                             "questions up to 1"))
    elif 0 < s.distance_quantile < 0.9:
        out.append(Problem(f, None, "warning", f"settings.distance_quantile {s.distance_quantile:g}: the distance rule "
                                               f"would refuse about {1 - s.distance_quantile:.0%} of in-scope questions"
                                               " (0.99, the default, about 1%)"))
    if s.classify_context < 0:
        out.append(Problem(f, None, "error", "settings.classify_context must be 0 (each message alone) or above"))
    if spec.model.n_embd % max(spec.model.n_head, 1):
        out.append(Problem(f, None, "error", "model.n_embd must be divisible by model.n_head"))
    if len(spec.intents) == 1:
        out.append(Problem(f, None, "error", "a bot needs at least two intents to classify between"))
    if spec.privacy.imported_responses not in ("private", "public"):
        out.append(Problem(f, None, "error", "privacy.imported_responses must be 'private' or 'public', "
                                             f"got '{spec.privacy.imported_responses}'"))
    if not 0 <= spec.training.weight_average < 1:
        out.append(Problem(f, None, "error", "training.weight_average must be 0 (off) or a decay below 1"))
    if not 0 <= spec.training.label_smoothing < 1:
        out.append(Problem(f, None, "error", "training.label_smoothing must be from 0 up to, not including, 1"))
    if spec.training.rdrop < 0:
        out.append(Problem(f, None, "error", "training.rdrop must be 0 (off) or above"))
    elif spec.training.rdrop and not spec.model.dropout:
        out.append(Problem(f, None, "warning", "training.rdrop does nothing with model.dropout 0 (its two passes are "
                                               "the same): set a dropout, or leave rdrop at 0"))
    if spec.training.precision not in ("fp32", "bf16", "auto"):
        out.append(Problem(f, None, "error", f"training.precision must be 'fp32', 'bf16' or 'auto', "
                                             f"got '{spec.training.precision}'"))
    if spec.training.outlier_weight < 0:
        out.append(Problem(f, None, "error", "training.outlier_weight must be 0 (off) or above"))
    if spec.training.pretrain_corpus and not Path(spec.training.pretrain_corpus).is_file():
        out.append(Problem(f, None, "error", f"training.pretrain_corpus: no such file '{spec.training.pretrain_corpus}' "
                                             "(a path from where you run candor, or leave it out)"))
    corpus = spec.training.outlier_corpus
    if corpus and corpus.lower() != "none" and not Path(corpus).is_file():
        out.append(Problem(f, None, "error", f"training.outlier_corpus: no such file '{corpus}' (a path from where "
                                             "you run candor; or \"none\", or leave it out for the bundled corpus)"))
    if not 0 < spec.privacy.count_epsilon < spec.privacy.target_epsilon:
        out.append(Problem(f, None, "error", "privacy.count_epsilon must be above 0 and below privacy.target_epsilon"))
    if spec.privacy.head_init not in ("random", "prototype"):
        out.append(Problem(f, None, "error", "privacy.head_init must be 'random' or 'prototype', "
                                             f"got '{spec.privacy.head_init}'"))
    if not 0 < spec.privacy.prototype_share < 1:
        out.append(Problem(f, None, "error", "privacy.prototype_share must be above 0 and below 1 (with no DP-SGD "
                                             "epochs the prototypes get the whole budget whatever it says)"))
    for path in spec.privacy.standin:
        if not Path(path).is_file():
            out.append(Problem(f, None, "error", f"privacy.standin: no such file '{path}' (labelled CSVs with text "
                                                 "and intent columns, or leave it out for the bundled ones)"))
    if not 0 <= spec.privacy.ngram_share <= 1:
        out.append(Problem(f, None, "error", f"privacy.ngram_share must be between 0 and 1, got {spec.privacy.ngram_share}"))
    if spec.privacy.epochs < 0:
        out.append(Problem(f, None, "error", f"privacy.epochs {spec.privacy.epochs} must be 0 or more"))
    if spec.training.epochs < 0:
        out.append(Problem(f, None, "error", f"training.epochs {spec.training.epochs} must be 0 or more"))
    if spec.privacy.enabled:  # what DP-SGD (safety/privacy.py) does not do yet: refused, never silently ignored
        t = spec.training
        for key, on, why in (
                ("rdrop", t.rdrop > 0, "its two passes per record are not wired into the per-record clipping; set it to 0"),
                ("weight_average", t.weight_average > 0, "the Opacus step updates no average; set it to 0"),
                ("precision", t.precision == "bf16", "the per-record gradients and their clipping are checked in "
                                                     "float32 only; set it to fp32 or auto (fp32 under DP)"),
                ("pretrain_corpus", bool(t.pretrain_corpus), "under DP the LM pre-trains on privacy.public_corpus; "
                                                             "name the public text there instead")):
            if on:
                out.append(Problem(f, None, "error", f"training.{key} is not available under DP yet ({why})"))
        if spec.privacy.epochs < 1 and spec.privacy.head_init != "prototype":
            out.append(Problem(f, None, "error", "privacy.epochs must be 1 or more with privacy.head_init: random "
                                                 "(0 only with privacy.head_init: prototype, where the prototypes are "
                                                 "the only private step)"))

    seen: dict[str, Example] = {}
    for intent in spec.intents.values():
        if intent.name == OUT_OF_SCOPE:
            out.append(Problem(f, intent.line, "error", f"'{OUT_OF_SCOPE}' is not an intent: list such questions under "
                                                        "the top-level 'out_of_scope:' (training) or as test examples"))
        if not intent.examples:
            out.append(Problem(f, intent.line, "error", f"intent '{intent.name}' has no examples"))
        elif len(intent.examples) < 2:
            out.append(Problem(f, intent.line, "warning", f"intent '{intent.name}' has only one example"))
        if not intent.responses:
            out.append(Problem(f, intent.line, "warning", f"intent '{intent.name}' has no responses: template replies fall back to the fallback text"))
        for ex in intent.examples:
            key = normalize(ex.text)
            if key in seen:
                first = seen[key]
                if first.intent == ex.intent:
                    out.append(Problem(f, ex.line, "warning", f"duplicate example '{ex.text}' (also on line {first.line})"))
                else:
                    out.append(Problem(f, ex.line, "error", f"example '{ex.text}' is labelled '{ex.intent}' here and '{first.intent}' on line {first.line}"))
            else:
                seen[key] = ex
    for ex in spec.out_of_scope:
        twin = seen.get(normalize(ex.text))
        if twin:
            out.append(Problem(f, ex.line, "error", f"out_of_scope example '{ex.text}' is also an example of intent "
                                                    f"'{twin.intent}' (line {twin.line})"))
    oos_seen = {normalize(e.text): e for e in spec.out_of_scope}
    for ex in spec.test:
        if normalize(ex.text) in oos_seen:
            out.append(Problem(f, ex.line, "error", f"train/test leakage: test example '{ex.text}' is also an "
                                                    f"out_of_scope training example (line {oos_seen[normalize(ex.text)].line})"))
        if ex.intent not in spec.intents and ex.intent != OUT_OF_SCOPE:
            out.append(Problem(f, ex.line, "error", f"test example uses unknown intent '{ex.intent}'"))
        twin = seen.get(normalize(ex.text))
        if twin and twin.text.strip() == ex.text.strip():
            out.append(Problem(f, ex.line, "error", f"train/test leakage: test example '{ex.text}' is also a training example (line {twin.line})"))
        elif twin:
            out.append(Problem(f, ex.line, "warning", f"test example '{ex.text}' differs from training example '{twin.text}' (line {twin.line}) only in case or spacing"))
    for d in spec.dialogues:
        for t in d:
            if t.intent and t.intent not in spec.intents:
                out.append(Problem(f, None, "error", f"dialogue turn uses unknown intent '{t.intent}'"))
    return out


def load_bot(path: str | Path, strict: bool = True) -> tuple[BotSpec, list[Problem]]:
    """Read and validate a bot file. With strict, any error raises BotFileError."""
    path = Path(path)
    problems: list[Problem] = []
    if not path.is_file():
        raise BotFileError([Problem(str(path), None, "error", "file not found")])
    text = _check_encoding(path.read_bytes(), str(path), problems)
    spec = parse_bot(text, str(path), problems)
    problems.sort(key=lambda p: (p.line or 0, p.severity))
    if strict and any(p.severity == "error" for p in problems):
        raise BotFileError([p for p in problems if p.severity == "error"])
    return spec, problems


def demo_bot_path() -> Path:
    return Path(__file__).parent / "demo" / "support_bot.yaml"
