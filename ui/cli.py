"""`candor` — every verb is a plain function in its own module under ui/verbs/."""
from __future__ import annotations

import argparse
import sys

from bot.io import ModelFileError
from bot.spec import BotFileError

DEFAULT_MODEL = "models/support_demo"


def _count(value: str) -> int:
    """argparse type: a whole number, 0 or above."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or above, got {n}")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="candor", description="Train, evaluate and chat with a Candor support bot.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    t = sub.add_parser("train", help="train a bot (the bundled demo bot by default)")
    t.add_argument("bot", nargs="?", help="bot YAML file (default: the bundled demo bot)")
    t.add_argument("-o", "--out", help="model directory (default: models/<bot name>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    t.add_argument("--epochs", type=int, help="fine-tuning epochs (overrides the bot file)")
    t.add_argument("--pretrain-epochs", type=int, help="LM pre-training epochs (offline default only)")
    t.add_argument("--seed", type=int, help="random seed (overrides the bot file)")
    t.add_argument("--base", help="'scratch', a hub id (gpt2, distilgpt2, microsoft/DialoGPT-small) or a local directory")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    t.add_argument("--keep-checkpoints", action="store_true", help="keep <out>.checkpoints/ after success")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.add_argument("--nproc", type=int, default=1, help="data-parallel training processes on this machine (torchrun; "
                                                       "same result as one process for the same batch; README)")
    dp = t.add_argument_group("differential privacy (DP-SGD with Opacus; or `privacy:` in the bot file)")
    dp.add_argument("--dp", action="store_true", help="train with DP-SGD")
    dp.add_argument("--target-epsilon", type=float, help="ε to reach over the planned epochs (default 8)")
    dp.add_argument("--delta", type=float, help="δ (default: 1/(10·N), below 1/N)")
    dp.add_argument("--max-grad-norm", type=float, help="per-record clipping norm C (default 1.0)")
    dp.add_argument("--logical-batch", type=int, help="expected records per step (default 256)")
    dp.add_argument("--physical-batch", type=int, help="records per forward pass, for memory (default 32)")
    dp.add_argument("--lora-rank", type=int, help="train peft LoRA adapters of this rank (+ intent head) instead "
                                             "of all weights; merged into the saved model (default 0: off)")
    dp.add_argument("--head-init", choices=["random", "prototype"],
                    help="prototype: start the intent head from noisy per-intent prototypes of the public base's "
                         "features (one Gaussian release, accounted with DP-SGD; with --epochs 0 the only private "
                         "step); default random")
    dp.add_argument("--prototype-share", type=float, help="share of the ε (after the count) the prototypes alone "
                                                         "would spend (default 0.5)")
    dp.add_argument("--public-corpus", help="public text/CSV/bot file for the tokenizer and LM pre-training "
                                            "(default: the bundled BANKING77 text)")
    rb = t.add_argument_group("robustness (TextAttack; or `robustness:` in the bot file)")
    rb.add_argument("--augment", help="augmented views of the training records, e.g. charswap,typo "
                                      "(charswap, typo, deletion, swap, synonym, eda)")
    rb.add_argument("--augment-share", type=float, help="chance that a record is seen augmented in a step (default 0.3)")
    rb.add_argument("--adversarial", action="store_true", help="adversarial training: after the clean epochs, attack "
                                                              "a share of the training records each epoch and train "
                                                              "on the adversarial examples that succeed")
    rb.add_argument("--adversarial-recipe", help="deepwordbug (default), pruthi or pwws")
    rb.add_argument("--attack-report", action="store_true", help="after training, attack the new model "
                                                                 "(deepwordbug, pruthi, pwws on 200 test messages) "
                                                                 "and put the table in its model card")

    e = sub.add_parser("eval", help="write intent reports for a trained model")
    e.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model directory (default: {DEFAULT_MODEL})")
    e.add_argument("--bot", help="bot YAML whose 'test:' section to use (default: the one it was trained from)")
    e.add_argument("-o", "--out", help="report directory (default: <model>/reports)")
    e.add_argument("--no-redact", action="store_true", help="read the test messages without PII redaction, to "
                   "measure what redaction costs (reports go to <model>/reports/no-redaction; the card is untouched)")
    e.add_argument("--target-oos-recall", type=float, default=0.8, metavar="R",
                   help="suggest the confidence threshold at which this share of the out-of-scope test questions "
                        "falls back (default 0.8); written to the report, applied only with --apply-threshold")
    e.add_argument("--replies", action="store_true",
                   help="also measure replies against the test set's held-out reference replies (`reply:`): ROUGE-L "
                        "and repetition for template, grounded, generated and generate-mode replies")
    e.add_argument("--reply-limit", type=_count, default=200, metavar="N",
                   help="with --replies: at most this many test examples (0: all of them; default 200)")
    e.add_argument("--apply-threshold", action="store_true",
                   help="serve with the suggested threshold: write it to the model's settings (its card)")

    r = sub.add_parser("redact", help="show what would be stored of a message: PII replaced by <TYPE> placeholders")
    r.add_argument("text", nargs="*", help="messages (default: one per line on standard input)")
    r.add_argument("--json", action="store_true", help="one JSON object per message: stored text, types, spans")
    r.add_argument("-v", "--verbose", action="store_true", help="also list the types found")

    c = sub.add_parser("chat", help="chat with a trained model in the terminal")
    c.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model directory (default: {DEFAULT_MODEL})")
    c.add_argument("--mode", choices=["template", "generate"], help="override the bot's response mode")
    c.add_argument("--device", default="cpu")

    x = sub.add_parser("explain", help="which words made the bot choose its intent (Captum integrated gradients)")
    x.add_argument("text", nargs="?", help="the message to explain")
    x.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"model directory (default: {DEFAULT_MODEL})")
    x.add_argument("--intent", help="explain this intent instead of the predicted one")
    x.add_argument("--reply", action="store_true", help="also attribute the reply to the message's words")
    x.add_argument("--json", action="store_true", help="print the explanation as JSON")
    x.add_argument("--html", help="write an HTML report to this file")
    x.add_argument("--no-colour", action="store_true", help="plain words in the terminal")
    x.add_argument("--steps", type=int, default=32, help="integration steps (default 32)")
    x.add_argument("--evaluate", action="store_true", help="faithfulness table (comprehensiveness/sufficiency) on the test set")
    x.add_argument("--bot", help="with --evaluate: bot YAML with the test set (default: the training bot file)")
    x.add_argument("--limit", type=int, default=200, help="with --evaluate: at most this many test texts")
    x.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("serve", help="the web app: chat, audit log and model card (trains the demo bot if needed)")
    s.add_argument("model", nargs="?", help=f"model directory (default: {DEFAULT_MODEL}, trained first if missing)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (anything but localhost needs --auth-file)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--auth-file", help="sign-in users, one user:password per line; enables the audit tab")
    s.add_argument("--audit-db", help="SQLite file or SQLAlchemy URL (default: <model>.audit.sqlite)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--explain-steps", type=int, default=32, help="integration steps per explanation")
    s.add_argument("--no-browser", action="store_true", help="do not open a browser tab")

    a = sub.add_parser("attack", help="attack the served bot with TextAttack recipes; robustness report")
    a.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model directory (default: {DEFAULT_MODEL})")
    a.add_argument("--recipe", default="deepwordbug,pruthi,pwws",
                   help="comma-separated recipes (default deepwordbug,pruthi,pwws; see --list)")
    a.add_argument("-n", type=int, default=200, help="test messages to attack (default 200; the same for every recipe)")
    a.add_argument("--time-budget", type=float, help="seconds for the whole run, shared by the recipes; stops cleanly "
                                                     "and reports what was attacked")
    a.add_argument("--query-budget", type=int, help="model queries per message at most (default: the recipe's own)")
    a.add_argument("--bot", help="bot YAML whose 'test:' section to attack (default: the one it was trained from)")
    a.add_argument("--seed", type=int, default=0, help="which test messages, and the recipes' random choices")
    a.add_argument("--list", action="store_true", help="list TextAttack's recipes: which run offline, and why not")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    pr = sub.add_parser("privacy", help="the privacy guarantee of a trained model")
    prsub = pr.add_subparsers(dest="privacy_verb", required=True, metavar="ACTION")
    rep = prsub.add_parser("report", help="print the (ε, δ) guarantee in plain words")
    rep.add_argument("model", nargs="?", default=DEFAULT_MODEL)

    au = sub.add_parser("audit", help="attack the privacy of a bot: canary exposure, membership inference")
    ausub = au.add_subparsers(dest="audit_verb", required=True, metavar="AUDIT")
    ca = ausub.add_parser("canaries", help="plant random secrets, train with and without DP, measure their exposure")
    ca.add_argument("bot", help="bot YAML to train from")
    ca.add_argument("--repeats", default="0,1,4,16",
                    help="times each canary is planted; 0: controls, never planted (default 0,1,4,16)")
    ca.add_argument("--per-level", type=int, default=2, help="canaries per repeat count (default 2)")
    ca.add_argument("--digits", type=int, default=7, help="digits in each secret (default 7: 10^7 possible)")
    ca.add_argument("--candidates", type=int, default=5000, help="random secrets to rank against (default 5000)")
    ca.add_argument("--modes", default="plain,dp", help="trainings to audit: plain, dp or both (default plain,dp)")
    ca.add_argument("--epsilon", type=float, default=8.0, help="target ε of the DP training (default 8)")
    ca.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the bot file's)")
    ca.add_argument("--intent", help="intent the canary records are labelled with (default: the first)")
    ca.add_argument("-o", "--out", help="folder for the report and the two models (default audits/BOT-canaries)")
    ca.add_argument("--card", help="model directory whose card gets the result")
    ca.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    me = ausub.add_parser("membership", help="loss-threshold membership inference on a trained model")
    me.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    me.add_argument("--bot", help="the bot file it was trained from (default: the one named in its card)")
    me.add_argument("-n", type=int, default=1000, help="members and non-members scored, each (default 1000)")
    me.add_argument("--seed", type=int, default=0)

    pp = sub.add_parser("pretrain-public", help="build a public base model once (public labelled text only) for "
                                                 "`--base`; multi-task: LM + each source's own intents")
    pp.add_argument("out", help="directory to write the base model to")
    pp.add_argument("--source", action="append", default=[], metavar="KIND:PATH",
                    help="public labelled data, repeatable: sgd:FILE (Schema-Guided Dialogue user turns CSV; train "
                         "and dev splits), banking77:DIR (its train.csv), csv:FILE (text,intent columns)")
    pp.add_argument("--epochs", type=int, default=3, help="multi-task intent epochs (default 3)")
    pp.add_argument("--pretrain-epochs", type=int, default=1, help="LM pre-training epochs before them (default 1)")
    pp.add_argument("--max-per-label", type=int, default=1500, help="at most this many texts per label (0: all)")
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    pp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("data", help="validate or import bot data")
    dsub = d.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    v = dsub.add_parser("validate", help="check a bot file; problems are reported as FILE:LINE")
    v.add_argument("file")
    i = dsub.add_parser("import", help="convert csv, banking77, bitext, sgd or rasa data into a bot file")
    i.add_argument("format", choices=["csv", "banking77", "bitext", "sgd", "rasa"])
    i.add_argument("source", nargs="+", help="file or folder (sgd: one or more folders; rasa: nlu.yml [domain.yml])")
    i.add_argument("-o", "--out", required=True, help="bot YAML to write")
    i.add_argument("--name", help="bot name")
    i.add_argument("--services", help="sgd: comma-separated services to keep, e.g. Banks_1,Banks_2")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given (train --nproc runs it again under torchrun)
    try:
        if args.verb == "train":
            from ui.verbs.train import train
            return train(args)
        if args.verb == "eval":
            from ui.verbs.evaluate import evaluate
            return evaluate(args)
        if args.verb == "redact":
            from ui.verbs.redact import redact
            return redact(args)
        if args.verb == "explain":
            from ui.verbs.explain import explain
            return explain(args)
        if args.verb == "attack":
            from ui.verbs.attack import attack
            return attack(args)
        if args.verb == "privacy":
            from ui.verbs.privacy import report
            return report(args)
        if args.verb == "audit":
            from ui.verbs.audit import audit
            return audit(args)
        if args.verb == "serve":
            from ui.verbs.serve import serve
            args.model_given, args.model = args.model is not None, args.model or DEFAULT_MODEL
            return serve(args)
        if args.verb == "chat":
            from ui.verbs.chat import chat
            return chat(args)
        if args.verb == "pretrain-public":
            from ui.verbs.pretrain import pretrain
            return pretrain(args)
        if args.verb == "data":
            from ui.verbs import data
            return data.validate(args) if args.data_verb == "validate" else data.import_(args)
    except BotFileError as e:
        print(e, file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"candor: {e}", file=sys.stderr)
        return 1
    except ModelFileError as e:
        print(f"candor: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
