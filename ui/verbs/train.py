"""`candor train [BOT.yaml]`"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot import distributed
from bot.spec import OUT_OF_SCOPE, BotFileError, Problem, check_robustness, demo_bot_path, load_bot
from bot.train import checkpoint_dir
from bot.train import train as run_training
from safety.guard import served_text


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


def train(args) -> int:
    if getattr(args, "nproc", 1) < 1:
        raise SystemExit("candor train: --nproc must be at least 1")
    if getattr(args, "nproc", 1) > 1 and not distributed.requested():
        return launch(args.nproc, getattr(args, "argv", sys.argv[1:]))
    main = distributed.is_main()
    say = print if main else (lambda *a, **k: None)
    path = Path(args.bot) if args.bot else demo_bot_path()
    spec, problems = load_bot(path)  # raises on any error: nothing is written for a bad bot file
    warnings = [p for p in problems if p.severity == "warning"]
    if warnings:
        say(f"{path}: {len(warnings)} warning(s); first: {warnings[0]}  (see `candor data validate {path}`)")
    for flag, section, key in (("epochs", "training", "epochs"), ("pretrain_epochs", "training", "pretrain_epochs"),
                               ("seed", "training", "seed"), ("checkpoint_every", "training", "checkpoint_every"),
                               ("base", "model", "base")):
        if getattr(args, flag) is not None:
            setattr(getattr(spec, section), key, getattr(args, flag))
    for flag, key in (("target_epsilon", "target_epsilon"), ("delta", "delta"), ("max_grad_norm", "max_grad_norm"),
                      ("logical_batch", "logical_batch"), ("physical_batch", "physical_batch"),
                      ("public_corpus", "public_corpus"), ("lora_rank", "lora_rank"),
                      ("head_init", "head_init"), ("prototype_share", "prototype_share")):
        if getattr(args, flag, None) is not None:
            setattr(spec.privacy, key, getattr(args, flag))
    if args.dp:
        spec.privacy.enabled = True
    for flag, key in (("augment", "augment"), ("augment_share", "augment_share"),
                      ("adversarial_recipe", "adversarial_recipe")):
        if getattr(args, flag, None) is not None:
            setattr(spec.robustness, key, [a.strip() for a in args.augment.split(",") if a.strip()]
                    if flag == "augment" else getattr(args, flag))
    if getattr(args, "adversarial", False):
        spec.robustness.adversarial = True
    problems = check_robustness(spec, file=f"{path} with the command line's options")
    if getattr(args, "attack_report", False) and not any(e.intent != OUT_OF_SCOPE for e in spec.test):
        problems.append(Problem(str(path), None, "error", "--attack-report needs in-scope examples under 'test:' "
                                                          "to attack"))
    if problems:
        raise BotFileError(problems)
    trainer_cls = None
    if spec.privacy.enabled:
        from safety.privacy import DPTrainer
        trainer_cls = DPTrainer
    out = Path(args.out or Path("models") / spec.name)
    say(f"training '{spec.name}': {len(spec.intents)} intents, {len(spec.examples)} examples -> {out} "
        f"(checkpoints in {checkpoint_dir(out)})")
    run_training(spec, out, resume=args.resume, device=args.device, progress=not args.quiet,
                 keep_checkpoints=args.keep_checkpoints, trainer_cls=trainer_cls,
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
