"""`candor data validate FILE` and `candor data import FORMAT SOURCE -o BOT.yaml`."""
from __future__ import annotations

from bot import importers
from bot.spec import dump_bot, load_bot


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


def run(args) -> int:
    return validate(args) if args.data_verb == "validate" else import_(args)


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
