"""`candor train [BOT.yaml]`"""
from __future__ import annotations

from pathlib import Path

from bot.spec import demo_bot_path, load_bot
from bot.train import checkpoint_dir
from bot.train import train as run_training


def train(args) -> int:
    path = Path(args.bot) if args.bot else demo_bot_path()
    spec, problems = load_bot(path)  # raises on any error: nothing is written for a bad bot file
    warnings = [p for p in problems if p.severity == "warning"]
    if warnings:
        print(f"{path}: {len(warnings)} warning(s); first: {warnings[0]}  (see `candor data validate {path}`)")
    for flag, section, key in (("epochs", "training", "epochs"), ("pretrain_epochs", "training", "pretrain_epochs"),
                               ("seed", "training", "seed"), ("checkpoint_every", "training", "checkpoint_every"),
                               ("base", "model", "base")):
        if getattr(args, flag) is not None:
            setattr(getattr(spec, section), key, getattr(args, flag))
    for flag, key in (("target_epsilon", "target_epsilon"), ("delta", "delta"), ("max_grad_norm", "max_grad_norm"),
                      ("logical_batch", "logical_batch"), ("physical_batch", "physical_batch"),
                      ("public_corpus", "public_corpus"), ("lora_rank", "lora_rank")):
        if getattr(args, flag, None) is not None:
            setattr(spec.privacy, key, getattr(args, flag))
    if args.dp:
        spec.privacy.enabled = True
    trainer_cls = None
    if spec.privacy.enabled:
        from safety.privacy import DPTrainer
        trainer_cls = DPTrainer
    out = Path(args.out or Path("models") / spec.name)
    print(f"training '{spec.name}': {len(spec.intents)} intents, {len(spec.examples)} examples -> {out} "
          f"(checkpoints in {checkpoint_dir(out)})")
    run_training(spec, out, resume=args.resume, device=args.device, progress=not args.quiet,
                 keep_checkpoints=args.keep_checkpoints, trainer_cls=trainer_cls)
    if spec.privacy.enabled:
        from safety.privacy import report
        print(report(out))
    print(f"saved {out}. Next: `candor eval {out}` or `candor chat {out}`")
    return 0
