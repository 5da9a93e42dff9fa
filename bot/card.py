"""The model card: `candor.json` (machine-readable) and `model_card.md` (for people).

`write` starts a card when training saves a model; later steps add their part with `update` (metrics,
privacy ledger, robustness, audits, public base). People read the card in typed sections — `Model`,
`Training`, `Privacy`, `Audits`, `Evaluation`, `Robustness` — each built from its part of the card dict
(a card of an older model lacks newer keys: each section writes only what its part holds) and each
writing its own lines once. `model_card.md`, `candor privacy report` (`privacy_report`) and the web
app's Model tab all render these same sections, so the privacy guarantee is worded here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bot.io import atomic_write_json, atomic_write_text
from bot.model import CARD_JSON, read_card
from bot.spec import BotSpec

CARD_MD = "model_card.md"


def write(directory: str | Path, spec: BotSpec, training: dict, counts: bool = True) -> dict:
    """`counts=False` (DP models) leaves out every exact count of training data."""
    card = {
        "candor_card_version": 1,
        "bot": {"name": spec.name, "description": spec.description, "source_file": spec.path},
        "intents": {n: {**({"examples": len(i.examples)} if counts else {}), "responses": list(i.responses),
                        **({"responses_source": i.responses_source} if i.responses_source else {})}
                    for n, i in spec.intents.items()},
        "fallback": spec.fallback,
        "placeholders": spec.placeholders,
        "settings": dataclasses.asdict(spec.settings),
        "model": dataclasses.asdict(spec.model),
        "training": training,
    }
    atomic_write_json(Path(directory) / CARD_JSON, card)
    atomic_write_text(Path(directory) / CARD_MD, render(card))
    return card


def update(directory: str | Path, **sections) -> dict:
    card = read_card(directory)
    card.update(sections)
    atomic_write_json(Path(directory) / CARD_JSON, card)
    atomic_write_text(Path(directory) / CARD_MD, render(card))
    return card


def at_least(x: float, digits: int = 2, significant: bool = False) -> str:
    """`x` to `digits` decimals (or significant digits), rounded up where rounding to nearest would state less
    than `x`: a stated ε or δ is never below the card's."""
    fmt = f".{digits}{'g' if significant else 'f'}"
    text = format(x, fmt)
    if not x or not math.isfinite(x):
        return text
    unit = 10.0 ** ((math.floor(math.log10(abs(x))) - digits + 1) if significant else -digits)
    while float(text) < x:
        text = format(float(text) + unit, fmt)
    return text


def private_steps(p: dict) -> str:
    """What a DP model's ε was spent on, in words."""
    return ("the prototypes and DP-SGD" if p.get("epochs", 1) else "the prototypes") if p.get("head_init") else "DP-SGD"


class Section:
    """One part of the card for people: a title and its lines (Markdown bullets), written once."""

    key: ClassVar[str]
    title: ClassVar[str]

    def lines(self) -> list[str]:
        raise NotImplementedError

    def markdown(self) -> str:
        """`## Title` and a bullet per line; empty when the card has nothing for this section."""
        lines = self.lines()
        return "\n".join([f"## {self.title}", *(f"- {line}" for line in lines)]) if lines else ""


@dataclass(frozen=True)
class Model(Section):
    """What the model is (card keys `model`, `intents`, `settings`, `public_base`)."""

    key: ClassVar[str] = "model"
    title: ClassVar[str] = "Model"
    model: dict
    intents: tuple[str, ...]
    settings: dict
    public_base: dict | None = None

    @classmethod
    def of(cls, card: dict) -> Model:
        return cls(card["model"], tuple(card["intents"]), card["settings"], card.get("public_base"))

    def lines(self) -> list[str]:
        m, s, pb = self.model, self.settings, self.public_base
        scratch = m["base"] == "scratch"
        return [
            "Base: " + ("GPT-2 trained from scratch (byte-level BPE fitted on the bot's text; LM pre-trained on it)"
                        if scratch else f"`{m['base']}`"),
            *([f"A public base (`candor pretrain-public`) from {'; '.join(pb['sources'])}: {pb['texts']} texts, "
               f"{pb['labels']} labels; fine-tune a bot from it with `candor train BOT.yaml --base DIR`"] if pb else []),
            f"Size: {m['n_layer']} layers, {m['n_embd']} hidden, {m['n_head']} heads, context {m['max_length']}"
            if scratch else "Size: as the base model",
            f"Intents: {len(self.intents)} ({', '.join(self.intents)})",
            f"Replies: `{s['response_mode']}` mode; fallback below confidence {s['confidence_threshold']} "
            f"or top-2 gap below {s['ambiguity_threshold']}",
            "Load with plain transformers: `AutoModelForSequenceClassification.from_pretrained(dir)` (intent) or "
            "`AutoModelForCausalLM.from_pretrained(dir)` (replies).",
        ]


@dataclass(frozen=True)
class Training(Section):
    """How the weights were trained (card key `training`). `private` (a DP card): no exact count of training
    data is written, even where an older card holds one."""

    key: ClassVar[str] = "training"
    title: ClassVar[str] = "Training"
    training: dict
    private: bool = False

    @classmethod
    def of(cls, card: dict) -> Training:
        return cls(card["training"], Privacy.of(card).dp)

    def lines(self) -> list[str]:
        t, counts = self.training, not self.private
        lines = [
            f"{t['train_examples']} training / {t['validation_examples']} validation utterances, "
            f"{t['reply_examples']} reply examples" if "train_examples" in t and counts else
            "Record counts not published (differential privacy: see Privacy)",
            f"{t.get('steps')} steps on {t.get('device')}, best epoch {t.get('best_epoch')} of {t.get('epochs_run')}, "
            f"{t.get('seconds')} s; seed {t.get('seed')}"
            + ("; forward passes in bfloat16 autocast (weights float32)" if t.get("precision") == "bf16" else ""),
        ]
        if "val_accuracy" in t:
            lines.append(f"Validation accuracy {t['val_accuracy']:.3f}")
        lines += [view_line(v, counts) for v in t.get("views", [])]
        oe, cal = t.get("outlier_exposure"), t.get("calibration")
        if oe is not None:
            lines.append(f"Outlier exposure: {oe['per_batch']} texts that belong to no intent per batch, trained toward "
                         f"equal probabilities (weight {oe['weight']}), from {oe['corpus']}"
                         + (f"; {oe['texts']} texts ({oe['dropped_as_near_examples']} dropped as too like the bot's "
                            f"examples, {oe['bot_file_out_of_scope_examples']} out_of_scope examples of the bot file)"
                            if "texts" in oe and counts else "") if oe.get("enabled") else "Outlier exposure: off")
        reg = t.get("regularisation") or {}
        if reg:
            lines.append("Intent fine-tuning: " + "; ".join(
                ([f"ships a moving average of the weights (decay {reg['weight_average']} per step)"]
                 if "weight_average" in reg else [])
                + ([f"label smoothing {reg['label_smoothing']}"] if "label_smoothing" in reg else [])
                + ([f"R-drop (two dropout passes, symmetric KL weight {reg['rdrop']})"] if "rdrop" in reg else [])))
        conv = t.get("conversation")
        if conv is not None and not conv["earlier_turns_read"]:
            lines.append("Conversation: the intent classifier reads each message alone")
        elif conv is not None:
            line = (f"Conversation: the intent classifier reads the last {conv['earlier_turns_read']} earlier user "
                    f"turn(s) before a message; trained with {conv['follow_up_share']:.0%} of single examples as the "
                    f"earlier turn of a generated follow-up that keeps their intent ({conv['follow_ups']}) and "
                    f"{conv['switch_share']:.0%} read after another intent's example")
            if conv.get("outliers_in_context_per_batch"):
                line += (f"; outlier exposure adds {conv['outliers_in_context_per_batch']} items per batch read in a "
                         f"conversation: generated follow-ups read alone ({conv['follow_ups_alone_share']:.0%}) and "
                         "outlier texts read after an example")
            lines.append(line)
        if cal is not None:
            lines.append(f"Confidence calibration: temperature {cal['temperature']} fitted on the {cal['fitted_on']}"
                         if cal.get("fitted_on") else "Confidence calibration: none (temperature 1"
                         + (f": {cal['why']})" if cal.get("why") else ")"))
        dist = t.get("distance_rule")
        if dist is not None:
            lines.append(f"Distance rule: falls back as unfamiliar beyond distance {dist['threshold']} (1 − mean cosine "
                         f"similarity of the intent features to the {dist['k']} nearest training examples"
                         + (", each also read after another intent's example" if dist.get("conversation_views") else "")
                         + f"; {dist['quantile']:g} of the {dist['fitted_on']} lies within it); the model directory "
                         "holds those examples' features (neighbours.safetensors)"
                         if dist.get("enabled") else f"Distance rule: off ({dist['why']})")
        if t.get("resumed_from_steps"):
            lines.append(f"Resumed from checkpoints at steps {t['resumed_from_steps']}")
        return lines


@dataclass(frozen=True)
class Privacy(Section):
    """The privacy guarantee in plain words (card key `privacy`: the DP trainer's ledger; absent or `dp: false`
    for a model trained without DP). The only place the guarantee is worded: the card, `candor privacy report`,
    the web app's Model tab and its header all read it from here."""

    key: ClassVar[str] = "privacy"
    title: ClassVar[str] = "Privacy"
    ledger: dict

    @classmethod
    def of(cls, card: dict) -> Privacy:
        return cls(card.get("privacy") or {})

    @property
    def dp(self) -> bool:
        return bool(self.ledger.get("dp"))

    def headline(self) -> str:
        """One sentence: whether there is a guarantee and, if so, its (ε, δ), rounded up."""
        p = self.ledger
        if not self.dp:
            return "Trained WITHOUT differential privacy: no privacy guarantee for the training utterances"
        return (f"Trained with differential privacy: (ε = {at_least(p['epsilon'])}, "
                f"δ = {at_least(p['delta'], 2, significant=True)}) for each training record")

    def lines(self) -> list[str]:
        p = self.ledger
        if not self.dp:
            return [f"{self.headline()}; the model may have memorised them. Retrain with `candor train --dp` for one."]
        epsilon, delta, epochs = at_least(p["epsilon"]), at_least(p["delta"], 2, significant=True), p.get("epochs", 1)
        return [
            f"{self.headline()}, {p['accountant']} accountant.",
            f"In plain words: adding or removing any one training record changes the probability of getting this "
            f"model by at most a factor of e^{epsilon} ≈ {at_least(math.exp(float(epsilon)), 1)}, except with "
            f"probability {delta}. A training record is {p['unit']}.",
            *([f"ε = {at_least(p['epsilon_sgd'])} ({private_steps(p)}, composed by the accountant) + "
               f"{p['epsilon_count']:g} (the noisy record count: about {p['records_noisy']} training utterances)."]
              if "records_noisy" in p else
              ["Trained before Candor hardened its DP noise and counts: the noise may be reproducible from the "
               "published seed and exact counts are published; retrain for the full guarantee."]),
            f"Covers: {p['covers']}.",
            f"Public data (no guarantee needed): {p['public_data']}.",
            f"Not covered: {p['not_covered']}.",
            *([f"Randomness: {p['noise']}."] if "noise" in p else []),
            *([f"Published about the data: {p['published_counts']}."] if "published_counts" in p else []),
            *([f"Trained privately: {p['trained']}."] if p.get("trained") else []),
            *([f"Intent head started from {p['head_init']}."] if p.get("head_init") else []),
            *([f"Expected before training, measured on public stand-in data of this bot's size: "
               f"{p['estimate']['line']}."] if p.get("estimate") else []),
            *([f"Prototype release: noise multiplier {p['prototype_noise_multiplier']:.3f}, sample rate 1, one step"
               + ("." if epochs else "; the prototype release is the only private step (no DP-SGD step).")
               + (f" Validation accuracy right after it: {p['prototype_val_accuracy']:.2f}."
                  if "prototype_val_accuracy" in p else "")]
              if "prototype_noise_multiplier" in p else []),
            *([f"DP-SGD: noise multiplier {p['noise_multiplier']:.3f}, sample rate {p['sample_rate']:.4f}, clipping "
               f"norm {p['max_grad_norm']}, {p['steps']} steps" + (f" over {p['epochs']} epochs" if "epochs" in p else "")
               + (f" ({p['clipping']}; LM head {p['lm_head']})" if "clipping" in p and "lm_head" in p else "") + "."]
              if epochs else []),
            "A record that repeats (the same person writing several utterances) is protected only group-wise: "
            "k such records get at most k·ε.",
        ]


@dataclass(frozen=True)
class Audits(Section):
    """The privacy audits (card key `audits`: `membership_summary`, `canary_summary`). `private`: a DP card,
    whose membership audit states no record count."""

    key: ClassVar[str] = "audits"
    title: ClassVar[str] = "Privacy audits"
    audits: dict
    private: bool = False

    @classmethod
    def of(cls, card: dict) -> Audits:
        return cls(card.get("audits") or {}, Privacy.of(card).dp)

    def lines(self) -> list[str]:
        out = []
        m = self.audits.get("membership")
        if m:
            sizes = (f"{m['members']} training vs {m['members']} held-out" if "members" in m and not self.private
                     else "training vs held-out")
            out.append(f"Membership inference ({m['attack']}, {sizes} "
                       f"utterances): AUC {m['auc']:.3f} (0.5 = a coin toss), true positives at 1% false positives "
                       f"{m['tpr_at_1pct_fpr']:.1%}, on {m['created'][:10]}."
                       + (f" By the distance rule's distance, which every user is shown: AUC {m['distance']['auc']:.3f}, "
                          f"true positives at 1% false positives {m['distance']['tpr_at_1pct_fpr']:.1%}."
                          if m.get("distance") else ""))
        c = self.audits.get("canaries")
        if c:
            for run in c["runs"]:
                who = "without DP" if run["epsilon"] is None else f"with DP at ε = {at_least(run['epsilon'])}"
                levels = ", ".join(f"{'never planted (control)' if r == '0' else r + 'x'}: {e:.1f}"
                                   for r, e in run["max_exposure"].items())
                out.append(f"Canary exposure, bot '{c['bot']}' retrained {who} with random secrets planted "
                           f"(largest exposure in bits of {c['space_bits']:.1f} possible, by times planted): {levels}.")
        if out:
            out.append("Audit figures are computed on the training data and are not covered by the guarantee; "
                       "canary figures come from models retrained with the same settings, not these weights.")
        return out


@dataclass(frozen=True)
class Evaluation(Section):
    """The test metrics of `candor eval` (card key `metrics`: the evaluation summary of bot/evaluate.py)."""

    key: ClassVar[str] = "evaluation"
    title: ClassVar[str] = "Evaluation"
    metrics: dict

    @classmethod
    def of(cls, card: dict) -> Evaluation:
        return cls(card.get("metrics") or {})

    def lines(self) -> list[str]:
        m = self.metrics
        if not m:
            return []
        lines = [f"Test set: {m['test_examples']} utterances",
                 f"Accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}",
                 f"Fallback rate {m['fallback_rate']:.3f}"]
        if m.get("accuracy_with_fallback") is not None:
            lines.append(f"Answered correctly (a correct intent that fell back counts as wrong) "
                         f"{m['accuracy_with_fallback']:.3f}")
        if m.get("ece") is not None:
            lines.append(f"Expected calibration error {m['ece']:.3f}")
        if "distance_threshold" in m:
            lines.append(f"Distance rule: threshold {m['distance_threshold']:g}, in-scope share beyond it "
                         f"{m['unfamiliar_rate']:.3f}")
        if m.get("oos_recall") is not None:
            lines.append(f"Out-of-scope recall {m['oos_recall']:.3f} ({m['oos_examples']} questions)"
                         + (f", AUROC in-scope vs out-of-scope {m['auroc']:.3f}" if m.get("auroc") else ""))
        if m.get("distance_auroc") is not None:
            lines.append(f"AUROC of the distance rule alone {m['distance_auroc']:.3f}")
        sug = m.get("suggested_threshold")
        if sug and not sug["confidence_threshold"]:
            from bot.evaluate import other_rules

            lines.append(f"Confidence threshold for out-of-scope recall ≥ {sug['target_oos_recall']:g}: none needed "
                         f"({other_rules(m)} {sug['oos_recall']:.2f})")
        elif sug:
            lines.append(f"Confidence threshold for out-of-scope recall ≥ {sug['target_oos_recall']:g}: "
                         f"{sug['confidence_threshold']:g} ({'applied' if sug.get('applied') else 'suggested'}; "
                         f"in-scope answered correctly {sug['accuracy_with_fallback']:.3f})")
        if m.get("replies"):
            r = m["replies"]
            lines.append(f"Replies, ROUGE-L against {r['examples']} held-out reference replies: " + ", ".join(
                f"{way} {w['rouge_l']:.3f}" + (f" (repetition {w['repetition']:.3f})" if "repetition" in w else "")
                for way, w in r.items() if isinstance(w, dict)))
        return lines


@dataclass(frozen=True)
class Robustness(Section):
    """The attack report of `candor attack` (card key `robustness`, safety/attack_report.py), as a table."""

    key: ClassVar[str] = "robustness"
    title: ClassVar[str] = "Robustness"
    report: dict | None = None

    @classmethod
    def of(cls, card: dict) -> Robustness:
        return cls(card.get("robustness") or None)

    def lines(self) -> list[str]:
        return [] if self.report else [
            "No attack report yet: `candor attack MODEL` (or `candor train --attack-report`) adds one."]

    def markdown(self) -> str:
        return f"## {self.title}\n" + robustness_table(self.report) if self.report else super().markdown()


@dataclass(frozen=True)
class Limitations(Section):
    """What every Candor model cannot do (no card key)."""

    key: ClassVar[str] = "limitations"
    title: ClassVar[str] = "Limitations"

    def lines(self) -> list[str]:
        return ["Trained only on this bot's examples; it will be unsure about, or wrong on, requests unlike them "
                "(see the out-of-scope recall under Evaluation for how often it falls back on them).",
                "Generated replies can be wrong or invented; `template` mode only ever sends the bot's own responses."]


@dataclass(frozen=True)
class Card:
    """A card dict (`candor.json`) read as its sections, in the order the card file shows them."""

    name: str
    description: str
    model: Model
    training: Training
    privacy: Privacy
    audits: Audits
    evaluation: Evaluation
    robustness: Robustness
    limitations: Limitations = Limitations()

    @classmethod
    def of(cls, card: dict) -> Card:
        return cls(card["bot"]["name"], card["bot"].get("description") or "", Model.of(card), Training.of(card),
                   Privacy.of(card), Audits.of(card), Evaluation.of(card), Robustness.of(card))

    def sections(self) -> list[Section]:
        return [self.model, self.training, self.privacy, self.audits, self.evaluation, self.robustness,
                self.limitations]

    def markdown(self, keys: tuple[str, ...] | None = None, title: bool = True) -> str:
        """The sections named by `keys` (all by default), each once, under the card's title if `title`."""
        parts = [s.markdown() for s in self.sections() if keys is None or s.key in keys]
        head = [f"# {self.name} — Candor dialogue model" + (f"\n\n{self.description}" if self.description else "")
                ] if title else []
        return "\n\n".join(head + [p for p in parts if p]) + "\n"


def render(card: dict, robustness: bool = True) -> str:
    """The Markdown card (`model_card.md`); `robustness=False` leaves out the Robustness section."""
    c = Card.of(card)
    return c.markdown(None if robustness else tuple(s.key for s in c.sections() if s.key != "robustness"))


def privacy_report(model_dir: str | Path) -> str:
    """`candor privacy report`: the card's Privacy and Privacy audits sections, as the card file shows them."""
    card = read_card(model_dir)
    if not card:
        raise FileNotFoundError(f"{model_dir}: no candor.json here; is this a Candor model directory?")
    name = card.get("bot", {}).get("name", str(model_dir))
    return f"# {name}: privacy\n\n" + Card.of(card).markdown(("privacy", "audits"), title=False)


def view_line(v: dict, counts: bool = True) -> str:
    """One training view (bot/train.py) in words; `counts=False` (DP) leaves out how often attacks worked."""
    if v.get("view") == "augment":
        return (f"Augmentation: {v['share']:.0%} of the records each step seen through one of "
                f"{', '.join(v['augmenters'])} (TextAttack)")
    if v.get("view") == "adversarial":
        done = "; ".join(f"epoch {e['epoch']}: {e['fooled']} of {e['attacked']} fooled"
                         for e in (v.get("epochs", []) if counts else []))
        return (f"Adversarial training: after {v['clean_epochs']} clean epochs, {v['share']:.0%} of the records "
                f"attacked with {v['recipe']} each epoch, successful adversarial examples trained on in their place"
                + (f" ({done})" if done else ""))
    return f"Training view: {v}"


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def robustness_table(report: dict) -> str:
    """The attack report (safety/attack_report.py) as a Markdown table: the card, the web app and the terminal."""
    rows = ["| recipe | attacked | clean accuracy | accuracy under attack | attack success rate | words perturbed "
            "| queries | wrong, no fallback |", "|---|---|---|---|---|---|---|---|"]
    for r in report["recipes"]:
        stopped = f" (stopped: {r['stopped']})" if r.get("stopped") else ""
        queries = "–" if r["queries"] is None else f"{r['queries']:.0f}"
        rows.append(f"| {r['recipe']} | {r['attacked']}{stopped} | {_pct(r['clean_accuracy'])} | "
                    f"{_pct(r['accuracy_under_attack'])} | {_pct(r['attack_success_rate'])} | "
                    f"{_pct(r['words_perturbed'])} | {queries} | {_pct(r['wrong_without_fallback'])} |")
    nn = report.get("natural_noise") or {}
    notes = [f"Attacked {report['model_version']} on {report['created'][:10]} through the served input path "
             f"({report.get('input_path', 'normalisation, length cap, PII redaction').removeprefix('as served: ')}); test messages from {report.get('test_source') or 'the bot file'}."]
    if nn.get("examples"):
        notes.append(f"Random typos, no attacker ({nn['description']}): accuracy {_pct(nn['clean_accuracy'])} → "
                     f"{_pct(nn['noisy_accuracy'])} on the same {nn['examples']} messages.")
    notes.append("Attack success rate: share of correctly classified messages the attack flipped. Wrong, no fallback: "
                 "share of those the bot would answer with the wrong intent instead of falling back.")
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def membership_summary(result: dict, dp: bool = False) -> dict:
    """What the card keeps of a membership audit (safety/membership.py): no per-record data, and for DP
    models no count of records either."""
    keys = ("attack", "auc", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr", "created") + (() if dp else ("members",))
    return {**{k: result[k] for k in keys}, **({"distance": {k: result["distance"][k] for k in (
        "attack", "auc", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr")}} if "distance" in result else {})}


def canary_summary(report: dict) -> dict:
    """What the card keeps of a canary audit (ui/verbs/audit.py): the largest exposure per run and repeat count."""
    runs = []
    for run in report["runs"]:
        levels = sorted({c["repeats"] for c in run["canaries"]})
        runs.append({"mode": run["mode"], "epsilon": run["epsilon"], "max_exposure": {
            str(r): max(c["exposure"] for c in run["canaries"] if c["repeats"] == r) for r in levels}})
    return {"space_bits": report["space_bits"], "bot": report["bot"], "created": report["created"], "runs": runs}


def audit_lines(card: dict) -> list[str]:
    """The privacy audits in words (the `Audits` section's lines)."""
    return Audits.of(card).lines()
