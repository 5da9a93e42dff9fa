"""`candor data validate FILE`, `candor data import FORMAT SOURCE -o BOT.yaml` and
`candor data corrections BOT.yaml --audit-db DB`."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot import importers
from bot.io import atomic_write_text
from bot.spec import OUT_OF_SCOPE, dump_bot, load_bot


def add_arguments(p) -> None:
    actions = p.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    v = actions.add_parser("validate", help="check a bot file; problems are reported as FILE:LINE")
    v.add_argument("file")
    i = actions.add_parser("import", help="convert csv, banking77, bitext, sgd or rasa data into a bot file")
    i.add_argument("format", choices=["csv", "banking77", "bitext", "sgd", "rasa"])
    i.add_argument("source", nargs="+", help="file or folder (sgd: one or more folders; rasa: nlu.yml [domain.yml])")
    i.add_argument("-o", "--out", required=True, help="bot YAML to write")
    i.add_argument("--name", help="bot name")
    i.add_argument("--services", help="sgd: comma-separated services to keep, e.g. Banks_1,Banks_2")
    c = actions.add_parser("corrections", help="add the auditors' corrections (Audit tab) to a bot file's "
                                               "'corrections:' section, for the next `candor train`")
    c.add_argument("file", help="bot YAML the model was trained from (rewritten in place unless -o)")
    c.add_argument("--audit-db", required=True, help="the audit store: a SQLite file or an SQLAlchemy URL")
    c.add_argument("-o", "--out", help="bot YAML to write instead (default: FILE)")


def run(args) -> int:
    return {"validate": validate, "import": import_, "corrections": corrections}[args.data_verb](args)


def validate(args) -> int:
    spec, problems = load_bot(args.file, strict=False)
    for p in problems:
        print(p)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    status = "INVALID" if errors else "OK"
    print(f"{status}: {args.file}: {len(spec.intents)} intents, {len(spec.examples)} examples, "
          f"{len(spec.out_of_scope)} out-of-scope examples, {len(spec.test)} test examples; {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def import_(args) -> int:
    src = args.source
    if args.format == "sgd":
        services = args.services.split(",") if args.services else None
        spec = importers.from_sgd(src, name=args.name or "sgd", services=services)
    elif args.format == "rasa":
        spec = importers.from_rasa(src[0], src[1] if len(src) > 1 else None, name=args.name)
    else:
        fn = importers.IMPORTERS[args.format]
        spec = fn(src[0], name=args.name) if args.name else fn(src[0])
    dump_bot(spec, args.out)
    _, problems = load_bot(args.out, strict=False)
    print(f"wrote {args.out}: {len(spec.intents)} intents, {len(spec.examples)} examples, "
          f"{len(spec.out_of_scope)} out-of-scope, {len(spec.test)} test, "
          f"{len(spec.dialogues)} dialogues; {len(problems)} problem(s) — run `candor data validate {args.out}`")
    return 0


def corrections(args) -> int:
    """The corrected turns of the audit store as the bot file's `corrections:` entries: the stored text (redacted
    when it was logged, and redacted again here), the right intent, and where it came from (turn, model version,
    auditor, time). An entry of the same turn is replaced; the rest of the file is kept as written."""
    from bot.store import AuditStore
    from safety.pii import redact_text

    if "://" not in args.audit_db and not Path(args.audit_db).is_file():
        raise FileNotFoundError(f"{args.audit_db}: no audit store there")
    spec, _ = load_bot(args.file)
    rows = AuditStore(args.audit_db, redact=redact_text).corrections()
    unknown = sorted({r["correct_intent"] for r in rows} - set(spec.intents) - {OUT_OF_SCOPE})
    if unknown:
        print(f"candor data corrections: {args.file} has no intent {', '.join(unknown)} (corrected in the audit "
              "store); add it to the bot file first")
        return 1
    text = Path(args.file).read_text(encoding="utf-8")
    written = (yaml.safe_load(text) or {}).get("corrections") or []
    kept = {e.get("turn") or ("by hand", i): e for i, e in enumerate(written) if isinstance(e, dict)}
    before = len(kept)
    for r in rows:
        kept[r["id"]] = {"text": redact_text(r["text"]), "intent": r["correct_intent"], "turn": r["id"],
                         "served_intent": r["intent"], "model_version": r["model_version"],
                         "corrected_by": r["corrected_by"], "corrected_at": r["corrected_at"]}
    # the file without its old section (up to the next top-level key), then the section written anew
    rest = re.sub(r"(?ms)^corrections:.*?(?=^[^\s#-]|\Z)", "", text).rstrip("\n")
    section = yaml.safe_dump({"corrections": list(kept.values())}, sort_keys=False, allow_unicode=True, width=1000)
    out = args.out or args.file
    atomic_write_text(out, rest + "\n" + section)
    load_bot(out)  # still a valid bot file (raises BotFileError with FILE:LINE otherwise)
    print(f"wrote {out}: {len(kept)} corrections, {len(kept) - before} of them new ({len(rows)} corrected turns in "
          f"the audit store); `candor train {out}` learns from them")
    return 0
