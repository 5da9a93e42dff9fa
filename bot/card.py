"""The model card: `candor.json` (machine-readable) and `model_card.md` (for people).

Later layers add sections (metrics, privacy ledger, robustness) with `update`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

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


def private_steps(p: dict) -> str:
    """What a DP model's ε was spent on, in words: the card, `candor privacy report`."""
    return ("the prototypes and DP-SGD" if p.get("epochs", 1) else "the prototypes") if p.get("head_init") else "DP-SGD"


def render(card: dict, robustness: bool = True) -> str:
    """The Markdown card; `robustness=False` leaves out the Robustness section (the web app shows it on its own)."""
    bot, m, t, s = card["bot"], card["model"], card["training"], card["settings"]
    base = "GPT-2 trained from scratch (byte-level BPE fitted on the bot's text; LM pre-trained on it)" \
        if m["base"] == "scratch" else f"`{m['base']}`"
    lines = [
        f"# {bot['name']} — Candor dialogue model", "",
        bot.get("description") or "", "",
        "## Model",
        f"- Base: {base}",
        *([f"- A public base (`candor pretrain-public`) from {'; '.join(card['public_base']['sources'])}: "
           f"{card['public_base']['texts']} texts, {card['public_base']['labels']} labels; "
           "fine-tune a bot from it with `candor train BOT.yaml --base DIR`"] if "public_base" in card else []),
        f"- Size: {m['n_layer']} layers, {m['n_embd']} hidden, {m['n_head']} heads, context {m['max_length']}"
        if m["base"] == "scratch" else "- Size: as the base model",
        f"- Intents: {len(card['intents'])} ({', '.join(card['intents'])})",
        f"- Replies: `{s['response_mode']}` mode; fallback below confidence {s['confidence_threshold']} "
        f"or top-2 gap below {s['ambiguity_threshold']}",
        "- Load with plain transformers: `AutoModelForSequenceClassification.from_pretrained(dir)` (intent) or "
        "`AutoModelForCausalLM.from_pretrained(dir)` (replies).", "",
        "## Training",
        f"- {t['train_examples']} training / {t['validation_examples']} validation utterances, "
        f"{t['reply_examples']} reply examples" if "train_examples" in t else
        "- Record counts not published (differential privacy: see Privacy)",
        f"- {t.get('steps')} steps on {t.get('device')}, best epoch {t.get('best_epoch')} of {t.get('epochs_run')}, "
        f"{t.get('seconds')} s; seed {t.get('seed')}"
        + ("; forward passes in bfloat16 autocast (weights float32)" if t.get("precision") == "bf16" else ""),
    ]
    if "val_accuracy" in t:
        lines.append(f"- Validation accuracy {t['val_accuracy']:.3f}")
    for v in t.get("views", []):
        lines.append("- " + view_line(v))
    oe, cal = t.get("outlier_exposure"), t.get("calibration")
    if oe is not None:
        lines.append(f"- Outlier exposure: {oe['per_batch']} texts that belong to no intent per batch, trained toward "
                     f"equal probabilities (weight {oe['weight']}), from {oe['corpus']}"
                     + (f"; {oe['texts']} texts ({oe['dropped_as_near_examples']} dropped as too like the bot's "
                        f"examples, {oe['bot_file_out_of_scope_examples']} out_of_scope examples of the bot file)"
                        if "texts" in oe else "") if oe.get("enabled") else "- Outlier exposure: off")
    reg = t.get("regularisation") or {}
    if reg:
        lines.append("- Intent fine-tuning: " + "; ".join(
            ([f"ships a moving average of the weights (decay {reg['weight_average']} per step)"]
             if "weight_average" in reg else [])
            + ([f"label smoothing {reg['label_smoothing']}"] if "label_smoothing" in reg else [])
            + ([f"R-drop (two dropout passes, symmetric KL weight {reg['rdrop']})"] if "rdrop" in reg else [])))
    conv = t.get("conversation")
    if conv is not None and not conv["earlier_turns_read"]:
        lines.append("- Conversation: the intent classifier reads each message alone")
    elif conv is not None:
        line = (f"- Conversation: the intent classifier reads the last {conv['earlier_turns_read']} earlier user "
                f"turn(s) before a message; trained with {conv['follow_up_share']:.0%} of single examples as the "
                f"earlier turn of a generated follow-up that keeps their intent ({conv['follow_ups']}) and "
                f"{conv['switch_share']:.0%} read after another intent's example")
        if conv.get("outliers_in_context_per_batch"):
            line += (f"; outlier exposure adds {conv['outliers_in_context_per_batch']} items per batch read in a "
                     f"conversation: generated follow-ups read alone ({conv['follow_ups_alone_share']:.0%}) and "
                     "outlier texts read after an example")
        lines.append(line)
    if cal is not None:
        lines.append(f"- Confidence calibration: temperature {cal['temperature']} fitted on the {cal['fitted_on']}"
                     if cal.get("fitted_on") else "- Confidence calibration: none (temperature 1"
                     + (f": {cal['why']})" if cal.get("why") else ")"))
    dist = t.get("distance_rule")
    if dist is not None:
        lines.append(f"- Distance rule: falls back as unfamiliar beyond distance {dist['threshold']} (1 − mean cosine "
                     f"similarity of the intent features to the {dist['k']} nearest training examples"
                     + (", each also read after another intent's example" if dist.get("conversation_views") else "")
                     + f"; {dist['quantile']:g} of the {dist['fitted_on']} lies within it); the model directory "
                     "holds those examples' features (neighbours.safetensors)"
                     if dist.get("enabled") else f"- Distance rule: off ({dist['why']})")
    if t.get("resumed_from_steps"):
        lines.append(f"- Resumed from checkpoints at steps {t['resumed_from_steps']}")
    p = card.get("privacy")
    lines += ["", "## Privacy"]
    if p and p.get("dp"):
        lines += [f"- Differentially private: (ε = {p['epsilon']:.2f}, δ = {p['delta']:.2g}) per training record "
                  f"({p['unit']}), {p['accountant']} accountant",
                  f"- Covers: {p['covers']}",
                  f"- Public data: {p['public_data']}",
                  *([f"- Trained privately: {p['trained']}"] if p.get("trained") else []),
                  *([f"- Intent head started from {p['head_init']}"] if p.get("head_init") else []),
                  f"- Not covered: {p['not_covered']}",
                  *([f"- ε = {p['epsilon_sgd']:.2f} ({private_steps(p)}, composed by the accountant) + "
                     f"{p['epsilon_count']:g} (noisy record count: about "
                     f"{p['records_noisy']})", f"- Randomness: {p['noise']}",
                     f"- Published about the data: {p['published_counts']}"] if "records_noisy" in p else
                    ["- Trained before Candor's noise and counts were hardened: the noise may be reproducible from "
                     "the published seed and exact counts are published; retrain for the full guarantee"]),
                  *([f"- Prototype release: noise multiplier {p['prototype_noise_multiplier']:.3f}, sample rate 1, "
                     "one step"] if "prototype_noise_multiplier" in p else []),
                  *([f"- DP-SGD: noise multiplier {p['noise_multiplier']:.3f}, sample rate {p['sample_rate']:.4f}, "
                     f"clipping norm {p['max_grad_norm']}, {p['steps']} steps"] if p.get("epochs", 1) else [])]
    else:
        lines.append("- Trained without differential privacy: no privacy guarantee for the training utterances.")
    if card.get("audits"):
        lines += ["", "## Privacy audits"] + [f"- {a}" for a in audit_lines(card)]
    metrics = card.get("metrics")
    if metrics:
        lines += ["", "## Evaluation", f"- Test set: {metrics['test_examples']} utterances",
                  f"- Accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}",
                  f"- Fallback rate {metrics['fallback_rate']:.3f}"]
        if metrics.get("accuracy_with_fallback") is not None:
            lines.append(f"- Answered correctly (a correct intent that fell back counts as wrong) "
                         f"{metrics['accuracy_with_fallback']:.3f}")
        if metrics.get("ece") is not None:
            lines.append(f"- Expected calibration error {metrics['ece']:.3f}")
        if metrics.get("oos_recall") is not None:
            lines.append(f"- Out-of-scope recall {metrics['oos_recall']:.3f} ({metrics['oos_examples']} questions)"
                         + (f", AUROC in-scope vs out-of-scope {metrics['auroc']:.3f}" if metrics.get("auroc") else ""))
        if metrics.get("replies"):
            r = metrics["replies"]
            lines.append(f"- Replies, ROUGE-L against {r['examples']} held-out reference replies: " + ", ".join(
                f"{way} {m['rouge_l']:.3f}" for way, m in r.items() if isinstance(m, dict)))
    if robustness:
        lines += ["", "## Robustness"]
        lines += [robustness_table(card["robustness"])] if card.get("robustness") else [
            "- No attack report yet: `candor attack MODEL` (or `candor train --attack-report`) adds one."]
    lines += ["", "## Limitations",
              "- Trained only on this bot's examples; it will be unsure about, or wrong on, requests unlike them "
              "(see the out-of-scope recall above for how often it falls back on them).",
              "- Generated replies can be wrong or invented; `template` mode only ever sends the bot's own responses."]
    return "\n".join(lines) + "\n"


def view_line(v: dict) -> str:
    """One training view (bot/train.py) in words."""
    if v.get("view") == "augment":
        return (f"Augmentation: {v['share']:.0%} of the records each step seen through one of "
                f"{', '.join(v['augmenters'])} (TextAttack)")
    if v.get("view") == "adversarial":
        done = "; ".join(f"epoch {e['epoch']}: {e['fooled']} of {e['attacked']} fooled" for e in v.get("epochs", []))
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
             f"(normalisation, length cap, PII redaction); test messages from {report.get('test_source') or 'the bot file'}."]
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
    """The privacy audits in words: the card, `candor privacy report` and the web app's Model tab."""
    audits, out = card.get("audits") or {}, []
    m = audits.get("membership")
    if m:
        sizes = f"{m['members']} training vs {m['members']} held-out" if "members" in m else "training vs held-out"
        out.append(f"Membership inference ({m['attack']}, {sizes} "
                   f"utterances): AUC {m['auc']:.3f} (0.5 = a coin toss), true positives at 1% false positives "
                   f"{m['tpr_at_1pct_fpr']:.1%}, on {m['created'][:10]}."
                   + (f" By the distance rule's distance, which every user is shown: AUC {m['distance']['auc']:.3f}, "
                      f"true positives at 1% false positives {m['distance']['tpr_at_1pct_fpr']:.1%}."
                      if m.get("distance") else ""))
    c = audits.get("canaries")
    if c:
        for run in c["runs"]:
            who = "without DP" if run["epsilon"] is None else f"with DP at ε = {run['epsilon']:.2f}"
            levels = ", ".join(f"{'never planted (control)' if r == '0' else r + 'x'}: {e:.1f}"
                               for r, e in run["max_exposure"].items())
            out.append(f"Canary exposure, bot '{c['bot']}' retrained {who} with random secrets planted "
                       f"(largest exposure in bits of {c['space_bits']:.1f} possible, by times planted): {levels}.")
    if out:
        out.append("Audit figures are computed on the training data and are not covered by the guarantee; "
                   "canary figures come from models retrained with the same settings, not these weights.")
    return out
