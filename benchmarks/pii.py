"""PII redaction: what reaches the audit store, what is redacted that should not be, what it costs.

On four hand-labelled synthetic sets (benchmarks/data/, SOURCE.md there; 16 classes of
personal data plus clean messages), each written by a separate author who saw neither the code nor the other
sets: pii_messages.jsonl (489, the development set the rules were tuned on), pii_heldout.jsonl (257; measured
once, then also used for tuning — its first numbers are in BENCHMARKS.md), pii_test.jsonl (268, the final
test set of issue 11, never looked at while tuning) and pii_fourth.jsonl (320, issue 31: support chat, ordinary
prose, obfuscated forms and tricky clean lines, copied in unread), each message goes the way a served turn goes
(guard, redact, then the audit store redacts again) and the stored text is checked, for Candor and for stock
Presidio with the same spaCy model side by side (its default recognizers, every entity it knows):

- leaked: the labelled PII string appears verbatim in the stored text (the target is zero);
- partly leaked: a word of 3+ characters of it survives (e.g. the surname of a name), reported too;
- false redaction: a clean message changed by redaction (target ≤ 2% of clean messages);
- latency: guard + redact per message, p50/p95 ms, pinned to one CPU core (target p95 ≤ 15 ms);
- values kept out, names and street addresses kept out (targets ≥ 97% each; issue 31), clean messages changed
  (target ≤ 3%);
- accuracy: `candor eval`'s test accuracy of trained models with redaction on and off (target drop ≤ 0.5).

    python benchmarks/pii.py                                  # the set + the demo model
    python benchmarks/pii.py --banking77-model DIR            # + a BANKING77 model (see BENCHMARKS.md)
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: spaCy/thinc and torch threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
# development (tuned on), held-out (tuned on after its first measurement), test (never looked at)
DATA = [HERE / "data" / "pii_messages.jsonl", HERE / "data" / "pii_heldout.jsonl", HERE / "data" / "pii_test.jsonl",
        HERE / "data" / "pii_fourth.jsonl"]  # the fourth: ordinary prose and obfuscated forms too, by a fourth writer
SHARED = HERE.parent.parent / "shared" / "data"


def load(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON: {e}") from None
    return rows


def stored(text: str) -> str:
    """What the audit store keeps of a typed message: guarded, redacted, then redacted again by the store. Without
    the spelling front end that `read_message` runs after redaction: it could turn a missed value into a nearby
    word, which would hide a leak from this count rather than prevent it."""
    from safety.guard import guard
    from safety.pii import redact, redact_text

    return redact_text(redact(guard(text)).text)


STOPWORDS = frozenset((HERE.parent / "safety" / "data" / "nltk" / "corpora" / "stopwords" / "english")
                      .read_text(encoding="utf-8").split())


def words(value: str) -> list[str]:
    return [w for w in re.findall(r"\w{3,}", value) if w.lower() not in STOPWORDS]


def count(word: str, text: str) -> int:
    return len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", text))


@functools.cache
def _stock():
    """Stock Presidio with the same spaCy model: its default recognizers, every entity it knows."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    from safety.pii import SPACY_PACKAGE, _offline_tldextract

    _offline_tldextract()
    engine = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy", "models": [
        {"lang_code": "en", "model_name": SPACY_PACKAGE}]}).create_engine()
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"]), AnonymizerEngine()


def stored_stock(text: str) -> str:
    """What stock Presidio would keep of the guarded message."""
    from safety.guard import guard

    analyzer, anonymizer = _stock()
    text = guard(text)
    return anonymizer.anonymize(text, analyzer.analyze(text, language="en")).text


def leak_table(rows: list[dict], store=stored) -> tuple[dict, list[dict], list[dict]]:
    from safety.guard import guard

    per = defaultdict(Counter)
    misses, false = [], []
    for r in rows:
        out = store(r["text"])
        if not r["pii"] and out != guard(r["text"]):
            false.append({"id": r["id"], "text": r["text"], "stored": out})
        for p in r["pii"]:
            c = per[p["class"]]
            c["values"] += 1
            exact = guard(p["value"]) in out
            part = [w for w in words(p["value"]) if count(w, out) > count(w, r["text"]) - count(w, p["value"])]
            c["leaked"] += exact
            c["partly"] += bool(part) and not exact
            if exact or part:
                misses.append({"id": r["id"], "class": p["class"], "value": p["value"], "stored": out,
                               "exact": exact})
    return per, misses, false


def latency(rows: list[dict], rounds: int = 3) -> tuple[float, float]:
    from safety.guard import read_message

    times = []
    for _ in range(rounds):
        for r in rows:
            t = time.perf_counter()
            read_message(r["text"])
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.95)]


def accuracy(model_dir: str, spec) -> dict:
    from bot.dialogue import Bot
    from bot.evaluate import evaluate
    from bot.spec import Example
    from safety.guard import served_text

    bot = Bot(model_dir)
    out = {}
    for on in (True, False):
        test = [Example(served_text(e.text, redact=on), e.intent, e.line) for e in spec.test]
        out["on" if on else "off"] = evaluate(bot.model, bot.enc, test, bot.settings)["summary"]["accuracy"]
    out["changed"] = sum(served_text(e.text) != served_text(e.text, redact=False) for e in spec.test)
    out["test"] = len(spec.test)
    return out


def kept_out(per: dict, classes: tuple[str, ...] | None = None) -> tuple[int, int]:
    """(values kept out, values) over `classes` (None: all)."""
    cs = [c for k, c in per.items() if classes is None or k in classes]
    values = sum(c["values"] for c in cs)
    return values - sum(c["leaked"] for c in cs), values


def _pct(pair: tuple[int, int]) -> str:
    return f"{pair[0]}/{pair[1]} ({pair[0] / pair[1]:.1%})" if pair[1] else "–"


def report(path: Path, show: bool, stock: bool) -> dict:
    rows = load(path)
    per, misses, false = leak_table(rows)
    p50, p95 = latency(rows)
    clean = sum(1 for r in rows if not r["pii"])
    print(f"\n### {path.name}: {len(rows)} messages ({len(rows) - clean} with PII, {clean} clean)\n")
    print("| class | values | leaked verbatim | partly leaked | redacted |")
    print("|---|---|---|---|---|")
    total = Counter()
    for cls in sorted(per):
        c = per[cls]
        total.update(c)
        print(f"| {cls} | {c['values']} | {c['leaked']} | {c['partly']} | {1 - c['leaked'] / c['values']:.1%} |")
    print(f"| **all** | {total['values']} | {total['leaked']} | {total['partly']} | "
          f"{1 - total['leaked'] / total['values']:.1%} |")
    print(f"\nfalse redaction: {len(false)} of {clean} clean messages ({len(false) / clean:.1%})")
    print(f"latency (guard + redact, one core): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    out = {"per_class": {k: dict(v) for k, v in per.items()}, "false_redactions": false, "misses": misses,
           "clean": clean, "p50_ms": p50, "p95_ms": p95}
    rows_ = [("Candor", per, false)]
    if stock:
        sper, smisses, sfalse = leak_table(rows, stored_stock)
        rows_.append(("stock Presidio, same spaCy model", sper, sfalse))
        out["stock"] = {"per_class": {k: dict(v) for k, v in sper.items()}, "false_redactions": len(sfalse)}
    print("\n| redactor | values kept out | names | street addresses | clean messages changed |")
    print("|---|---|---|---|---|")
    for name, pc, fl in rows_:
        print(f"| {name} | {_pct(kept_out(pc))} | {_pct(kept_out(pc, ('PERSON',)))} | "
              f"{_pct(kept_out(pc, ('ADDRESS',)))} | {len(fl)}/{clean} ({len(fl) / clean:.1%}) |")
    if show:
        for m in misses:
            print(f"{'LEAK' if m['exact'] else 'part'} {m['id']} {m['class']}: {m['value']!r} -> {m['stored']!r}")
        for f in false:
            print(f"FALSE {f['id']}: {f['text']!r} -> {f['stored']!r}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, nargs="+", default=DATA)
    p.add_argument("--demo-model", default="models/support_demo", help="'' to skip")
    p.add_argument("--banking77-model", default="", help="a model trained on BANKING77 ('' to skip)")
    p.add_argument("--show-misses", action="store_true", help="print every leaked value and false redaction")
    p.add_argument("--no-stock", action="store_true", help="skip stock Presidio (same spaCy model) beside Candor")
    p.add_argument("--out", type=Path, default=HERE / "out" / "pii.json")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    from safety.pii import ner_name, warm_up

    t0 = time.time()
    warm_up()
    print(f"\n{platform.node()}, one CPU core; NER: {ner_name()} (loaded in {time.time() - t0:.1f} s)")
    sets = {path.name: report(path, args.show_misses, not args.no_stock) for path in args.data}
    acc = {}
    from bot.spec import demo_bot_path, load_bot

    if args.demo_model:
        acc["demo"] = accuracy(args.demo_model, load_bot(demo_bot_path())[0])
    if args.banking77_model:
        from bot.importers import from_banking77

        acc["banking77"] = accuracy(args.banking77_model, from_banking77(SHARED / "banking77"))
    if acc:
        print("\n| model | test messages | changed by redaction | accuracy, redaction off | on | drop (points) |")
        print("|---|---|---|---|---|---|")
        for name, a in acc.items():
            print(f"| {name} | {a['test']} | {a['changed']} | {a['off']:.2%} | {a['on']:.2%} | "
                  f"{100 * (a['off'] - a['on']):.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"ner": ner_name(), "sets": sets, "accuracy": acc}, indent=2, ensure_ascii=False))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
