"""Adversarial training as a view of the records (`candor train --adversarial`, `robustness.adversarial`).

Like `textattack train`, inside Candor's trainer: after `adversarial_clean_epochs` clean epochs, at
the start of every fine-tuning epoch a seeded random `adversarial_share` of the training records is
attacked with `adversarial_recipe` against the current model, through the served input path
(`safety.attacks.ServedIntentModel`); each successful adversarial example is that record's view for
the epoch (bot/train.py), replacing it — never an extra record. Under DP a record and its adversarial
version therefore still give one clipped gradient per step, and the example depends only on that
record and the current model (already a private release), so the accountant's ε stays true.

The examples of an epoch are kept in the checkpoint (`<out>.checkpoints/`, the trainer's working
folder, removed after training unless --keep-checkpoints; the texts are training records as read by
the served input path, PII redacted), so a resumed epoch trains on the same ones. The weights kept
as "best" come from an adversarial epoch, never from the clean ones before.
"""
from __future__ import annotations

import random
import time

from tqdm.auto import tqdm


class AdversarialView:
    """A `bot.train.View` (see the module docstring)."""

    def __init__(self, recipe: str, share: float, clean_epochs: int, query_budget: int, progress: bool = True,
                 log=print):
        from safety.recipes import check

        check([recipe])
        self.recipe, self.share, self.clean_epochs, self.query_budget = recipe, share, clean_epochs, query_budget
        self.progress, self.log = progress, log
        self.examples: dict[int, str] = {}
        self.history: list[dict] = []
        self.private = False

    def start_epoch(self, trainer) -> None:
        state, self.private = trainer.state, trainer.spec.privacy.enabled
        self.history = state.adversarial.setdefault("history", [])
        saved = state.adversarial.get("views")
        if state.epoch < self.clean_epochs:
            self.examples = {}
        elif saved and saved["epoch"] == state.epoch:  # resuming this epoch
            self.examples = {int(k): v for k, v in saved["examples"].items()}
        else:
            self.examples = self._attack(trainer)
            state.adversarial["views"] = {"epoch": state.epoch,
                                          "examples": {str(k): v for k, v in self.examples.items()}}

    def _attack(self, trainer) -> dict[int, str]:
        from safety.attacks import ServedIntentModel, attack_one, build, status

        records, epoch, seed = trainer.train_records, trainer.state.epoch, trainer.training.seed
        pick = sorted(random.Random(f"{seed}-adversarial-{epoch}").sample(range(len(records)),
                                                                          max(1, round(self.share * len(records)))))
        wrapper = ServedIntentModel(trainer.model, trainer.enc)
        attack = build(self.recipe, wrapper, self.query_budget)
        intents = trainer.model.intents
        pick = [i for i in pick if wrapper.served_text(records[i].text) is not None]  # the bot would refuse the rest
        out, t0 = {}, time.time()
        bar = tqdm(pick, desc=f"attack {epoch + 1}/{trainer.training.epochs} ({self.recipe})", disable=not self.progress,
                   unit="rec")
        for i in bar:
            r = records[i]
            result = attack_one(attack, r.text, intents.index(r.intent), hash((seed, epoch, i)) & 0x7FFFFFFF)
            if status(result) == "successful":
                out[i] = result.perturbed_result.attacked_text.text
            bar.set_postfix(fooled=len(out), refresh=False)
        bar.close()
        self.history.append({"epoch": epoch + 1, "attacked": len(pick), "fooled": len(out),
                             "seconds": round(time.time() - t0, 1)})
        self.log(f"epoch {epoch + 1}: {self.recipe} fooled the model on {len(out)} of {len(pick)} attacked training "
                 f"records ({time.time() - t0:.0f} s); they replace those records this epoch")
        return out

    def __call__(self, index: int, record, rng: random.Random) -> str | None:
        return self.examples.get(index)

    def may_keep(self, epoch: int) -> bool:
        """Keep-best must not fall back to weights from before adversarial training began."""
        return epoch >= self.clean_epochs

    def describe(self) -> dict:
        out = {"view": "adversarial", "recipe": self.recipe, "share": self.share, "clean_epochs": self.clean_epochs,
               "query_budget": self.query_budget}
        if not self.private:  # how often attacks worked depends on the private records: not published under DP
            out["epochs"] = self.history
        return out
