"""`candor train [BOT.yaml]`"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot import distributed
from bot.spec import OUT_OF_SCOPE, BotFileError, BotSpec, Problem, check_robustness, demo_bot_path, load_bot
from bot.train import checkpoint_dir
from bot.train import train as run_training
from safety.guard import served_text

# The bot-file settings the command line overrides: (section, field, help[, argparse keywords]). Each becomes
# --field-name (or the keywords' "flag") of the field's type; "{default}" in a help shows the field's default.
TRAINING = (("training", "epochs", "fine-tuning epochs (overrides the bot file)"),
            ("training", "pretrain_epochs", "LM pre-training epochs (offline default only)"),
            ("training", "seed", "random seed (overrides the bot file)"),
            ("model", "base", "'scratch', a hub id (gpt2, distilgpt2, microsoft/DialoGPT-small) or a local directory"),
            ("training", "checkpoint_every", "steps between checkpoints"))
PRIVACY = (("privacy", "enabled", "train with DP-SGD", {"flag": "--dp"}),
           ("privacy", "target_epsilon", "ε to reach over the planned epochs (default {default})"),
           ("privacy", "delta", "δ (default: 1/(10·N), below 1/N)"),
           ("privacy", "max_grad_norm", "per-record clipping norm C (default {default})"),
           ("privacy", "logical_batch", "expected records per step (default {default})"),
           ("privacy", "physical_batch", "records per forward pass, for memory (default {default})"),
           ("privacy", "lora_rank", "train peft LoRA adapters of this rank (+ intent head) instead of all weights; "
                                    "merged into the saved model (default {default}: off)"),
           ("privacy", "epochs", "DP-SGD epochs after the prototypes (default {default}: the prototypes are the "
                                 "whole private step); --epochs is non-private training's", {"flag": "--dp-epochs"}),
           ("privacy", "head_init", "prototype: start the intent head and n-gram rows from noisy per-intent "
                                    "prototypes (one Gaussian release, accounted with any DP-SGD after it); random: "
                                    "DP-SGD alone (needs --dp-epochs); default {default}",
            {"choices": ["random", "prototype"]}),
           ("privacy", "prototype_share", "share of the ε (after the count) the prototypes alone would spend when "
                                          "DP-SGD epochs follow (default {default})"),
           ("privacy", "ngram_share", "share of each record's prototype vector on its n-grams, the rest on GPT-2's "
                                      "features (default {default})"),
           ("privacy", "public_corpus", "public text/CSV/bot file for the tokenizer and LM pre-training (default: "
                                        "the bundled BANKING77 text)"))
ROBUSTNESS = (("robustness", "augment", "augmented views of the training records, e.g. charswap,typo (charswap, typo, "
                                        "deletion, swap, synonym, eda)"),
              ("robustness", "augment_share", "chance that a record is seen augmented in a step (default {default})"),
              ("robustness", "adversarial", "adversarial training: after the clean epochs, attack a share of the "
                                            "training records each epoch and train on the adversarial examples that "
                                            "succeed"),
              ("robustness", "adversarial_recipe", "{default} (default), pruthi or pwws"))
OVERRIDES = TRAINING + PRIVACY + ROBUSTNESS


def _names(value: str) -> list[str]:
    """argparse type of a list setting: comma-separated names."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _flag(override) -> str:
    _, name, _, *keywords = override
    return (keywords[0] if keywords else {}).get("flag", "--" + name.replace("_", "-"))


def add_overrides(parser, overrides) -> None:
    """A flag per (section, field, help[, keywords]), typed as the bot file's field (a list: comma-separated names; a
    bool: a switch), None unless given."""
    defaults = BotSpec(name="", intents={}, fallback="")
    for override in overrides:
        section, name, help, *keywords = override
        keywords = {k: v for k, v in (keywords[0] if keywords else {}).items() if k != "flag"}
        default = getattr(getattr(defaults, section), name)
        if isinstance(default, bool):
            keywords.update(action="store_true", default=None)
        else:
            keywords["type"] = _names if isinstance(default, list) else type(default)
        parser.add_argument(_flag(override), **keywords,
                            help=help.format(default=f"{default:g}" if isinstance(default, float) else default))


def apply_overrides(spec: BotSpec, args, overrides=OVERRIDES) -> None:
    """The flags given (not None) into the bot file's settings."""
    for override in overrides:
        value = getattr(args, _flag(override).lstrip("-").replace("-", "_"))
        if value is not None:
            setattr(getattr(spec, override[0]), override[1], value)


def add_arguments(p) -> None:
    p.add_argument("bot", nargs="?", help="bot YAML file (default: the bundled demo bot)")
    p.add_argument("-o", "--out", help="model directory (default: models/<bot name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    add_overrides(p, TRAINING)
    p.add_argument("--keep-checkpoints", action="store_true", help="keep <out>.checkpoints/ after success")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel training processes on this machine (torchrun; "
                                                       "same result as one process for the same batch; README)")
    add_overrides(p.add_argument_group("differential privacy (DP-SGD with Opacus; or `privacy:` in the bot file)"),
                  PRIVACY)
    robustness = p.add_argument_group("robustness (TextAttack; or `robustness:` in the bot file)")
    add_overrides(robustness, ROBUSTNESS)
    robustness.add_argument("--attack-report", action="store_true",
                            help="after training, attack the new model (deepwordbug, pruthi, pwws on 200 test "
                                 "messages) and put the table in its model card")


def launch(nproc: int, argv: list[str]) -> int:
    """This same command as `nproc` processes under torchrun (one machine; see the README for several)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    print(f"starting {nproc} data-parallel training processes (torchrun, gloo on CPU / NCCL on GPU)", flush=True)
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                            "-m", "ui.cli", *rest])


def run(args) -> int:
    if args.nproc < 1:
        raise SystemExit("candor train: --nproc must be at least 1")
    if args.nproc > 1 and not distributed.requested():
        return launch(args.nproc, args.argv)
    main = distributed.is_main()
    say = print if main else (lambda *a, **k: None)
    path = Path(args.bot) if args.bot else demo_bot_path()
    spec, problems = load_bot(path)  # raises on any error: nothing is written for a bad bot file
    warnings = [p for p in problems if p.severity == "warning"]
    if warnings:
        say(f"{path}: {len(warnings)} warning(s); first: {warnings[0]}  (see `candor data validate {path}`)")
    apply_overrides(spec, args)
    problems = check_robustness(spec, file=f"{path} with the command line's options")
    if args.attack_report and not any(e.intent != OUT_OF_SCOPE for e in spec.test):
        problems.append(Problem(str(path), None, "error", "--attack-report needs in-scope examples under 'test:' "
                                                          "to attack"))
    if problems:
        raise BotFileError(problems)
    out = Path(args.out or Path("models") / spec.name)
    say(f"training '{spec.name}': {len(spec.intents)} intents, {len(spec.examples)} examples -> {out} "
        f"(checkpoints in {checkpoint_dir(out)})")
    run_training(spec, out, resume=args.resume, device=args.device, progress=not args.quiet,
                 keep_checkpoints=args.keep_checkpoints,
                 views=views(spec, progress=not args.quiet and main, log=say), read=served_text)
    if not main:
        return 0
    if spec.privacy.enabled:
        from safety.privacy import report
        print(report(out))
    if getattr(args, "attack_report", False):
        from safety.attack_report import DEFAULT_RECIPES
        from ui.verbs.attack import attack_report
        attack_report(out, DEFAULT_RECIPES, 200, progress=not args.quiet)
    print(f"saved {out}. Next: `candor eval {out}` or `candor chat {out}`")
    return 0


def views(spec, progress: bool = True, log=print) -> list:
    """The robustness views the bot file asks for: adversarial examples first, then augmentation
    (the noisy view, the trainer's own, comes last)."""
    r, out = spec.robustness, []
    if r.adversarial:
        from safety.adversarial import AdversarialView
        out.append(AdversarialView(r.adversarial_recipe, r.adversarial_share, r.adversarial_clean_epochs,
                                   r.adversarial_query_budget, progress=progress, log=log))
    if r.augment:
        from safety.augment import AugmentView
        out.append(AugmentView(r.augment, r.augment_share))
    return out
