"""DP-SGD for the whole bot (intent head and reply model) with Opacus.

One record = one distinct training utterance (bot/data.py: its validation split and its reply are
decided by a keyed hash of its own text, so adding or removing it moves no other record). Each step,
Poisson sampling picks records; each record gives ONE sequence `<|user|> view-of-text<|intent|> name<|bot|>
reply` (the classifier's prefix never truncated), whose intent loss and reply loss make one per-record
gradient, clipped (ghost clipping, in one backward pass: safety/bookkeeping.py) before Gaussian noise is added.
With `privacy.head_init: prototype` the intent head first comes from one Gaussian release of per-intent sums of
the records' unit feature vectors (safety/prototypes.py); the accountant's history holds it first, and DP-SGD's
noise is solved for the composition of both.

The noise and the Poisson sampling come from generators seeded from the operating system's CSPRNG at
every start and never saved (Opacus' secure mode when torchcsprng is installed), so neither can be
replayed from the published seed. Nothing exact about the private data is published: the number of
training records is released once as a Laplace-noised count (its ε is added to the stated ε) and
that noisy count alone sets the sample rate, the steps per epoch and the default δ; per-intent and
split sizes are left out of the card. Responses imported from data (CSV, Bitext, SGD) are private
unless the bot file declares them public (`privacy.imported_responses: public`). Views
(`Trainer.view`: word dropout/insertion, TextAttack augmentation, adversarial examples) replace a
record's text for a step, never add records, and are made from that record alone plus public
resources (inserted words come only from the tokenizer's public + authored text, synonyms from
WordNet, adversarial examples from attacking that record against the current, already private, model).
Multi-turn context is left out under DP (it is other records' text); each utterance is one record.

The offline default never fits its tokenizer or pre-trains on the private utterances: both use a
public corpus (the bundled BANKING77 training text unless `privacy.public_corpus` names another)
plus the bot's own authored responses and intent names. Validation is reported, never used to
pick weights: the last epoch is kept.
"""
from __future__ import annotations

import copy
import math
import random
import secrets
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant
from opacus.data_loader import DPDataLoader
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler
from torch.utils.data import TensorDataset

from bot import distributed
from bot.classify import predict_features
from bot.data import read_corpus, read_labelled
from bot.pretrain import base_provenance
from bot.train import Policy
from safety.bookkeeping import BookKeeping
from safety.guard import served_text
from safety.gpt2_dp import (
    add_lora,
    conv1d_to_linear,
    linear_to_conv1d,
    merge_lora,
    position_ids,
    train_top,
    untie,
)

ACCOUNTANT = "prv"
BUNDLED_PUBLIC = Path(__file__).resolve().parents[1] / "bot" / "demo" / "public_banking77.csv"
PROTOTYPE_PUBLIC = 5000  # public texts the prototypes' whitening is fitted on (the first of the public corpus)
# The estimate's public stand-in: fine-grained banking intents (BANKING77) and coarse ones of other services (the
# first user turn of SGD dialogues), so that a bot's intents are drawn from both kinds.
STANDIN = [BUNDLED_PUBLIC, BUNDLED_PUBLIC.with_name("public_sgd_intents.csv")]
POOR = 0.75  # an expected accuracy below this is called poor before training, with what would help


COUNT_NOTE = ("no exact count of the private data is published: the number of training records is released once "
              "as a Laplace-noised count (its ε is part of the stated ε), which alone sets the sample rate, the steps "
              "per epoch and the default δ; per-intent and train/validation sizes are left out")
FLOAT_CAVEAT = ("not Opacus' secure mode (torchcsprng is not installed), so the floating-point caveat applies: "
                "Gaussian noise sampled in floating point can leak more than the accountant assumes (Mironov 2012, "
                "'On significance of the least significant bits for differential privacy')")


def default_delta(n_records: float) -> float:
    """1e-5, or below that for large N: 1/(10·N) rounded down to one significant digit. `n_records` is the
    noisy count, so δ is the same for all but very large datasets and reveals nothing exact."""
    x = min(1e-5, 1.0 / (10 * max(n_records, 1)))
    return float(f"{x:.0e}") if float(f"{x:.0e}") <= x else float(f"{x:.0e}") / 2


def noisy_count(n: int, epsilon: float) -> int:
    """n + Laplace(1/ε) from the OS CSPRNG, rounded (ε-DP for add/remove-one: the sensitivity is 1)."""
    u = secrets.SystemRandom().random() - 0.5
    return max(1, round(n - math.copysign(1.0, u) * math.log(1 - 2 * abs(u)) / epsilon))


def secure_mode() -> bool:
    """Opacus' secure mode needs torchcsprng (no wheel for current torch on PyPI)."""
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        return False
    return True


def os_seeded_generator(device) -> torch.Generator:
    """A torch generator seeded from the OS CSPRNG; the seed is never stored or logged."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def private_spec(spec, log=print):
    """The spec the DP trainer may use: responses imported from data are private unless the bot file declares
    them public; private ones are not used for the tokenizer, the vocabulary or reply training, and not shipped."""
    imported = {n: i.responses_source for n, i in spec.intents.items() if i.responses and i.responses_source}
    if not imported:
        return spec, None
    sources = sorted(set(imported.values()))
    if spec.privacy.imported_responses == "public":
        log(f"WARNING: responses of {len(imported)} intent(s) were imported from data ({'; '.join(sources)}) and are "
            "DECLARED PUBLIC by this bot file (privacy.imported_responses: public): they train the tokenizer and the "
            "reply model and are shipped verbatim, OUTSIDE the privacy guarantee.")
        return spec, (f"responses of {len(imported)} intent(s) imported from data ({'; '.join(sources)}) were declared "
                      "public by the bot file: used as authored text and shipped, not covered by the guarantee")
    spec = copy.deepcopy(spec)
    for n in imported:
        spec.intents[n].responses = []
    log(f"DP: responses of {len(imported)} intent(s) were imported from data ({'; '.join(sources)}); treated as "
        "private, they are not used and not shipped, so those intents reply with the fallback. Write your own "
        "responses, or declare them public with privacy.imported_responses: public.")
    return spec, (f"responses of {len(imported)} intent(s) imported from data ({'; '.join(sources)}) were treated as "
                  "private: not used for training and not shipped (those intents reply with the fallback)")


def epsilon_for(history: list, delta: float) -> float:
    """ε from Opacus' PRV accountant for a history of (noise_multiplier, sample_rate, steps)."""
    acc = PRVAccountant()
    acc.history = [tuple(h) for h in history]
    with np.errstate(divide="ignore"):  # a release at sample rate 1 takes log(1 - q) = -inf, which it handles
        return float(acc.get_epsilon(delta))


def noise_for(epsilon: float, delta: float, sample_rate: float, steps: int, before: list = ()) -> float:
    """The smallest noise multiplier (to 0.1%) whose `steps` steps at `sample_rate`, after the mechanisms already
    in `before`, keep the accountant's ε at or below `epsilon` (bisection; the accountant is monotone in σ)."""
    if not (epsilon > 0 and steps >= 1 and 0 < sample_rate <= 1):
        raise ValueError(f"no noise plan for ε {epsilon} over {steps} step(s) at sample rate {sample_rate}")

    def eps(sigma):
        return epsilon_for([*before, (sigma, sample_rate, steps)], delta)

    low, high = 0.05, 1.0
    while eps(high) > epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise ValueError(f"no noise reaches ε {epsilon}: the earlier mechanisms already spend it")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if eps(mid) > epsilon else (low, mid)
    return high


def per_record_loss(model, b: dict, pos: torch.Tensor, y: torch.Tensor, reply_weight: float,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """One value per record: its joint sequence's intent cross-entropy + `reply_weight` × its mean reply-token
    cross-entropy (`model`: a GPT-2 intent model, or Opacus' wrapper of it)."""
    intent_logits, lm_logits = model(b["input_ids"], b["attention_mask"], position_ids(b["attention_mask"]), pos)
    loss = F.cross_entropy(intent_logits, y, reduction="none", label_smoothing=label_smoothing)
    labels = b["labels"][:, 1:]
    tok = F.cross_entropy(lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]), labels.reshape(-1),
                          reduction="none", ignore_index=-100).view(labels.shape)
    return loss + reply_weight * tok.sum(1) / (labels != -100).sum(1).clamp_min(1)


class DPSGD:
    """DP-SGD as the training loop (bot/train.py) is handed it, Opacus-style: the loop keeps its own epochs,
    checkpoints and card, and calls `setup` (the noisy record count, δ), `prepare_model`, `start` (the noise plan,
    the prototypes, Opacus' wrapped optimizer and Poisson sampler), `batches` and `step` (clip each record,
    add noise, step once a Poisson sample is complete), `ledger` (what a checkpoint keeps) and `finish` / `card`.
    `policy` is what the guarantee forbids plain training's other uses of the records."""

    policy = Policy(per_record=True, use_validation=False, index_examples=False, publish_counts=False,
                    outlier_exposure=False)

    def __init__(self, spec, log=print):
        spec, self.responses_note = private_spec(spec, log)
        if spec.training.epochs != spec.privacy.epochs:  # the loop's epochs under DP: DP-SGD's (privacy.epochs)
            spec = copy.deepcopy(spec)
            spec.training.epochs = spec.privacy.epochs
        self.spec = spec
        self.settings, self.log = self.spec.privacy, log
        self.public_path = Path(self.settings.public_corpus) if self.settings.public_corpus else BUNDLED_PUBLIC
        self.pretrain_texts = read_corpus(self.public_path)  # what may see private data instead: public text ...
        self.tokenizer_texts = self.pretrain_texts + (  # ... and, for the tokenizer, the bot's authored text
            [r for i in self.spec.intents.values() for r in i.responses] + list(self.spec.intents) + [self.spec.fallback])
        self.engine = self.bk = None
        self.calibration = None  # the temperature from public data, when `finish` sets one
        self.last_loss = math.nan  # the last non-empty Poisson sample's mean loss, for the progress bar

    # ---------------------------------------------------------------- before fine-tuning
    def setup(self, trainer) -> None:
        """The noisy record count (released once per run and kept in the checkpoint for resuming), δ, and how the
        noise is drawn; once the trainer has its records and state."""
        self.n, p = len(trainer.train_records), self.settings
        if not self.n:
            raise ValueError("no training records left for DP-SGD")
        self.record = trainer.state.privacy
        if "records_noisy" not in self.record:
            self.record["records_noisy"] = distributed.from_main(  # one draw, whatever the number of processes
                noisy_count(self.n, p.count_epsilon) if trainer.main else None)
            trainer.checkpoint()
        self.n_noisy = self.record["records_noisy"]
        self.delta = p.delta or default_delta(self.n_noisy)
        if self.delta >= 1 / self.n:
            raise ValueError(f"privacy.delta {self.delta} must be below 1/N (N: the number of training records)")
        epochs = trainer.training.epochs
        self.noise = ("Opacus secure mode (torchcsprng) for the noise and the Poisson sampling" if secure_mode() else
                      "Gaussian noise and Poisson sampling from generators seeded from the operating system's "
                      "CSPRNG at every start, never saved or published (the training seed sets only the model's "
                      "initialisation, the data order of pre-training and the views); " + FLOAT_CAVEAT)
        if not epochs:  # the prototypes' release is the only private step: no sampling, one noise draw
            self.noise = ("Gaussian noise for the prototypes from a generator seeded from the operating system's CSPRNG "
                          "at every start, never saved or published; no Poisson sampling (no DP-SGD step); "
                          + FLOAT_CAVEAT)
        elif secure_mode() and p.head_init == "prototype":
            self.noise += ("; the prototypes' noise is drawn from a generator seeded from the operating system's CSPRNG "
                           "(not torchcsprng), in floating point: " + FLOAT_CAVEAT)

    def prepare_model(self, model) -> None:
        """Linear layers and an untied LM head, for per-record clipping; then what trains privately."""
        p, reply_weight = self.settings, self.spec.training.reply_weight
        conv1d_to_linear(model.lm)
        untie(model.lm)
        if p.lora_rank > 0:  # adapters everywhere + intent head and final norm; LM head frozen
            add_lora(model.to(next(model.parameters()).device), p.lora_rank)
            train_top(model, 0, lm_head=False, freeze_rest=False)
        else:
            train_top(model, p.train_blocks, lm_head=reply_weight > 0)
        if reply_weight <= 0:  # no reply loss: the LM head would only ever receive noise
            model.lm.get_output_embeddings().weight.requires_grad_(False)

    def start(self, trainer) -> None:
        """Plan the noise (before anything private is touched: an impossible plan fails here), release the
        prototypes if asked, and wrap the trainer's optimizer with Opacus, with a Poisson sampler at rate 1/S,
        S steps an epoch, S from the noisy count only."""
        p, epochs = self.settings, trainer.training.epochs
        self.steps_per_epoch = max(1, round(self.n_noisy / p.logical_batch))
        budget = p.target_epsilon - p.count_epsilon
        total_steps = self.steps_per_epoch * epochs
        before = []  # the prototype release, first in the accountant's history (made once per run, kept for resuming)
        if "prototype" in self.record:
            before = [(self.record["prototype"]["noise_multiplier"], 1.0, 1)]
        elif p.head_init == "prototype":
            before = [(noise_for(p.prototype_share * budget if total_steps else budget, self.delta, 1.0, 1), 1.0, 1)]
        sigma_after = 0.0  # DP-SGD's σ after the prototypes
        if before and total_steps and "history" not in self.record:
            sigma_after = noise_for(budget, self.delta, 1 / self.steps_per_epoch, total_steps, before)
        if before and "prototype" not in self.record:
            self._expect(trainer, before[0][0], total_steps)
            self._prototype_head(trainer, before[0][0])
        secure = secure_mode()
        self.engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=secure)
        world = distributed.world()
        loader = DPDataLoader(TensorDataset(torch.arange(self.n)), sample_rate=1 / self.steps_per_epoch,
                              generator=self.engine.secure_rng if secure else os_seeded_generator("cpu"),
                              distributed=world > 1)
        if world > 1:  # each rank Poisson-samples its part of the records at the same rate (Opacus' DPDDP recipe)
            loader.batch_sampler.__class__ = _EveryStepSampler
            loader.batch_sampler.num_batches = self.steps_per_epoch
        else:
            loader.batch_sampler.steps = self.steps_per_epoch
        module = trainer.model
        if world > 1:
            from opacus.distributed import (
                DifferentiallyPrivateDistributedDataParallel as DPDDP,
            )
            module = DPDDP(trainer.model)
        common = dict(module=module, optimizer=trainer.opt, data_loader=loader, criterion=torch.nn.CrossEntropyLoss(),
                      max_grad_norm=p.max_grad_norm, poisson_sampling=False, grad_sample_mode="ghost",
                      noise_generator=None if secure else os_seeded_generator(trainer.device))
        if "history" in self.record:  # resuming: same noise as planned, and the accountant continues its history
            self.dp_model, self.opt, _, self.loader = self.engine.make_private(
                noise_multiplier=self.record["noise_multiplier"], **common)
            self.engine.accountant.history = [tuple(h) for h in self.record["history"]]
        elif before:  # DP-SGD gets what the prototypes left: σ for the composition of both
            self.dp_model, self.opt, _, self.loader = self.engine.make_private(noise_multiplier=sigma_after, **common)
            self.engine.accountant.history = list(before)
        else:
            self.dp_model, self.opt, _, self.loader = self.engine.make_private_with_epsilon(
                target_epsilon=budget, target_delta=self.delta, epochs=epochs, **common)
        trainer.opt = self.opt
        # One backward pass per step (safety/bookkeeping.py) on one process; Opacus' two-pass ghost clipping
        # under DPDDP, whose gradient hooks expect it. Same clipped sum either way (tests/integration/test_privacy.py).
        if world == 1:
            self.dp_model.remove_hooks()  # Opacus computes no norms: BookKeeping does
            self.bk = BookKeeping(trainer.model, p.max_grad_norm)
        # The mean's divisor, from public numbers too; per rank (the ranks' means are averaged).
        self.opt.expected_batch_size = max(1, round(self.n_noisy / self.steps_per_epoch)) / world
        self.sample_rate = 1 / self.steps_per_epoch
        if total_steps:
            self.log(f"DP-SGD: noise multiplier {self.opt.noise_multiplier:.3f}, sample rate {self.sample_rate:.4f}, "
                     f"clip {p.max_grad_norm}, target ε {p.target_epsilon} (of which {p.count_epsilon} for "
                     f"the noisy record count) at δ {self.delta:.1e} over {epochs} epochs of about "
                     f"{self.n_noisy} records")

    def _expect(self, trainer, sigma: float, sgd_steps: int) -> None:
        """Before anything private is read: the plan, and the accuracy the prototypes reach at σ on public stand-in data
        of the bot's size (safety/prototypes.py: `standin_estimate`); when that is poor, what would help. It reads
        public text, the public base and public numbers only (the bot file's intents, the noisy record count)."""
        from safety.prototypes import standin_estimate

        p, model = self.settings, trainer.model
        paths = [Path(x) for x in p.standin] or STANDIN
        rows = [(served_text(t, redact=False), f"{path.stem}:{i}") for path in paths for t, i in read_labelled(path)]
        public = [served_text(t, redact=False) for t in self.pretrain_texts[:PROTOTYPE_PUBLIC]]
        k, n = len(model.intents), self.n_noisy

        def estimate(sigma=sigma, n_intents=k, n_records=n):
            return standin_estimate(model, trainer.enc, rows, n_intents, n_records, sigma, p.ngram_share, public,
                                    " + ".join(path.name for path in paths))

        started = time.time()
        predict_features(model, trainer.enc, public[:256])
        per_text = (time.time() - started) / len(public[:256])  # one forward pass, this machine
        # a DP-SGD step: forward and backward of a logical batch (about 3 forward passes, plus the clipping's share)
        minutes = (n * per_text * 2 + sgd_steps * p.logical_batch * per_text * 3.5) / 60
        self.log(f"DP plan: ε {p.target_epsilon:g} at δ {self.delta:.1e} for about {n} records and {k} intents; the "
                 f"prototypes (noise multiplier {sigma:.3f}, one release)"
                 + (f", then {sgd_steps} DP-SGD steps ({trainer.training.epochs} epochs)" if sgd_steps else
                    ", the whole private step")
                 + f"; about {max(1, round(minutes))} minute(s) from here on this machine (a rough guide)")
        if not trainer.main:
            return
        expected = estimate()
        self.log("DP expected accuracy" + (" of the prototypes alone (DP-SGD after them may add some)" if sgd_steps
                                           else "") + ": " + expected.line())
        self.record["estimate"] = {"accuracy": expected.accuracy, "low": expected.low, "high": expected.high,
                                   "intents": expected.intents, "per_intent": expected.per_intent,
                                   "source": expected.source, "line": expected.line(), "sgd_steps": sgd_steps,
                                   "temperature": expected.temperature}
        if expected.per_intent < 0.9 * n / max(k, 1) or expected.intents < k:
            self.log(f"  (the stand-in has fewer intents or records than this bot: the estimate is for "
                     f"{expected.intents} intents with about {expected.per_intent} records each)")
        if expected.accuracy < POOR:
            budget = p.target_epsilon - p.count_epsilon
            share = p.prototype_share if sgd_steps else 1.0  # the prototypes' part of the budget, as planned
            more = {f"ε {2 * p.target_epsilon:g}": estimate(sigma=noise_for(2 * budget * share, self.delta, 1.0, 1))}
            doubled = estimate(n_records=2 * n)
            if doubled.per_intent > 1.2 * expected.per_intent:  # only where the stand-in has the rows to show it
                more["twice the records per intent"] = doubled
            if k >= 4:
                more["half the intents"] = estimate(n_intents=k // 2, n_records=n / 2)
            self.log(f"DP WARNING: {100 * expected.accuracy:.0f}% is a poor expected accuracy. What would help, on the "
                     "same stand-in: " + "; ".join(f"{what}: {100 * e.accuracy:.0f}%" for what, e in more.items())
                     + ". Stop now (Ctrl-C) to change the plan, or let it train.")
            self.record["estimate"]["would_help"] = {what: e.accuracy for what, e in more.items()}

    def _prototype_head(self, trainer, sigma: float) -> None:
        """The intent head from noisy per-intent prototypes (safety/prototypes.py), noise multiplier σ."""
        from safety.prototypes import prototype_head

        model, records = trainer.model, trainer.train_records
        intent_id = {n: i for i, n in enumerate(model.intents)}
        head, grams = distributed.from_main(prototype_head(
            model, trainer.enc, [r.text for r in records], [intent_id[r.intent] for r in records],
            [served_text(t, redact=False) for t in self.pretrain_texts[:PROTOTYPE_PUBLIC]], sigma,
            os_seeded_generator("cpu"), self.settings.ngram_share) if trainer.main else None)
        with torch.no_grad():
            model.score.weight.copy_(head.to(model.score.weight))
            if grams is not None:
                model.ngrams.weight.copy_(grams.to(model.ngrams.weight))
        self.record["prototype"] = {"noise_multiplier": sigma,  # in the history as (σ, 1.0, 1)
                                    "ngram_share": self.settings.ngram_share if grams is not None else 0.0}
        val = trainer.validate()  # held-out records, outside the guarantee: only their accuracy is reported
        if val:
            self.record["prototype"]["val_accuracy"] = round(val["val_accuracy"], 2)  # rounded, as DP history is
        alone = epsilon_for([(sigma, 1.0, 1)], self.delta)
        self.log(f"DP prototypes: intent head{' and n-gram rows' if grams is not None else ''} from per-intent sums "
                 f"of unit feature vectors plus Gaussian noise (σ {sigma:.3f}, ε {alone:.2f} alone at δ "
                 f"{self.delta:.1e}); ε spent {alone + self.settings.count_epsilon:.2f} of "
                 f"{self.settings.target_epsilon:g}"
                 + (f", validation accuracy {val['val_accuracy']:.2f}" if val else ""))  # rounded, as on the card
        trainer.checkpoint()

    # ---------------------------------------------------------------- each step
    def batches(self):
        """This epoch's Poisson samples of record indices, in physical parts (`privacy.physical_batch`)."""
        with BatchMemoryManager(data_loader=self.loader, max_physical_batch_size=self.settings.physical_batch,
                                optimizer=self.opt) as loader:
            for (idx,) in loader:
                yield idx.tolist()

    def batch(self, trainer, idx: list[int]):
        """One joint sequence per sampled record: a view of its text, its intent position and reply labels."""
        intent_id = {n: i for i, n in enumerate(trainer.model.intents)}
        reply_weight, seqs, labels, pos, ys = trainer.training.reply_weight, [], [], [], []
        for i in idx:
            r = trainer.train_records[i]
            rng = random.Random(f"{trainer.training.seed}-dp-{trainer.state.step}-{i}")  # the same on any rank
            ids, lab, at = trainer.enc.joint(trainer.view(i, r, rng), r.intent, r.reply if reply_weight > 0 else None,
                                             self.spec.settings.max_reply_tokens)
            seqs.append(ids), labels.append(lab), pos.append(at), ys.append(intent_id[r.intent])
        b = {k: v.to(trainer.device) for k, v in trainer.enc.pad_batch(seqs, labels).items()}
        return b, torch.tensor(pos, device=trainer.device), torch.tensor(ys, device=trainer.device)

    def step(self, trainer, idx: list[int]) -> bool:
        """Clip each sampled record's gradient; on a Poisson sample's last part add the noise and step. True when
        a step was taken (an empty sample is a step too: noise only, as DP-SGD and the accountant assume)."""
        if idx:
            b, pos, y = self.batch(trainer, idx)
            args = (b, pos, y, trainer.training.reply_weight, trainer.training.label_smoothing)
            if self.bk:
                with self.bk.recording():
                    losses = per_record_loss(self.dp_model, *args)
                self.bk.backward(losses)
            else:
                losses = per_record_loss(self.dp_model, *args)
                DPTensorFastGradientClipping(self.dp_model, self.opt, losses, "mean").backward()
            self.last_loss = losses.mean().item()
        else:
            for p in self.opt.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        self.opt.step()
        self.opt.zero_grad()
        return not self.opt._is_last_step_skipped

    def spent(self) -> float:
        """ε spent so far, all of it: the accountant's over what ran (the prototypes, DP-SGD's steps) + the count's."""
        ran = self.engine and self.engine.accountant.history  # the prototypes first, when released
        return (self.engine.get_epsilon(self.delta) if ran else 0.0) + self.settings.count_epsilon

    def ledger(self) -> dict:
        """What a checkpoint keeps: the noisy count, the prototypes' σ, and the accountant's plan and history."""
        if self.engine:
            history = [list(h) for h in self.engine.accountant.history]
            self.record.update({"noise_multiplier": self.opt.noise_multiplier, "sample_rate": self.sample_rate,
                                "history": history, "epsilon": (epsilon_for(history, self.delta) if history else 0.0)
                                + self.settings.count_epsilon})
        return self.record

    # ---------------------------------------------------------------- after training
    def finish(self, model) -> None:
        """The model back in the plain GPT-2 layout (LoRA merged, Conv1D); when the prototypes were the whole private
        step, their probabilities calibrated by the temperature fitted on the stand-in's (public) test rows: the
        validation records are outside the guarantee, so nothing is fitted on them (`calibration`)."""
        if self.bk:
            self.bk.close()
        merge_lora(model.lm)
        linear_to_conv1d(model.lm)
        estimate = self.record.get("estimate") or {}
        if "temperature" in estimate and not estimate.get("sgd_steps"):
            model.temperature = estimate["temperature"]
            self.calibration = {"temperature": round(estimate["temperature"], 4),
                                "fitted_on": f"public stand-in data ({estimate['source']}: the test rows of the "
                                             "expected-accuracy estimate), no private record"}

    def card(self, trainer) -> dict:
        """The model card's privacy section."""
        p, t, ledger = self.settings, trainer.training, self.ledger()
        if "history" not in ledger:
            return {}
        epsilon_sgd = epsilon_for(ledger["history"], self.delta)
        proto = ledger.get("prototype")
        steps = sum(h[2] for h in ledger["history"]) - (1 if proto else 0)  # DP-SGD's steps; the release is apart
        return {
            "dp": True, "epsilon": epsilon_sgd + p.count_epsilon, "delta": self.delta,
            "target_epsilon": p.target_epsilon, "epsilon_sgd": epsilon_sgd, "epsilon_count": p.count_epsilon,
            "accountant": "Opacus PRV (Poisson-subsampled Gaussian; the noisy count's ε added by basic composition)",
            "noise_multiplier": ledger["noise_multiplier"],
            "sample_rate": ledger["sample_rate"], "max_grad_norm": p.max_grad_norm, "steps": steps,
            "epochs": t.epochs, "logical_batch": p.logical_batch, "physical_batch": p.physical_batch,
            "processes": distributed.world(),
            "records_noisy": ledger["records_noisy"],
            "unit": ("one distinct training utterance (after normalising case and spaces) with its intent and its "
                     "reply target; whether it is held out for validation and which reply it trains on depend only "
                     "on a keyed hash of its own text, so adding or removing it changes no other record"),
            "noise": self.noise,
            "published_counts": COUNT_NOTE,
            "clipping": "per record, flat, ghost clipping" + (" (book-keeping: one backward pass)" if self.bk else ""),
            "lm_head": "untied from the input embeddings" + ("; frozen (no reply loss)" if t.reply_weight <= 0 else ""),
            "trained": ("the intent head " + ("and n-gram rows " if proto and proto.get("ngram_share") else "")
                        + "only (the prototypes); every other weight is the public base's, unchanged"
                        if not t.epochs else
                        f"LoRA adapters of rank {p.lora_rank} on every attention and MLP projection "
                        "(merged into the saved weights), final norm and intent head; the rest is frozen at its "
                        "public pre-training" if p.lora_rank > 0 else
                        "all parameters" + (" but the LM head" if t.reply_weight <= 0 else "")
                        if p.train_blocks < 0 else
                        f"top {p.train_blocks} transformer block(s), final norm and intent head"
                        + (" and LM head" if t.reply_weight > 0 else "")
                        + "; the rest is frozen at its public pre-training"),
            "covers": f"the training utterances of bot '{self.spec.name}' (intent head and reply model)",
            "public_data": (f"tokenizer and LM pre-training: {self.public_path.name} (public) plus the bot's own "
                            "authored responses and intent names" if self.spec.model.base == "scratch"
                            else base_provenance(self.spec.model.base)),
            "not_covered": "validation utterances (held out by the keyed hash; only their accuracy is reported) and "
                           "test utterances; dialogue turns that are not also examples, and multi-turn context (not used under DP)"
                           + (f"; {self.responses_note}" if self.responses_note else ""),
            **({"head_init": ("noisy per-intent prototypes: the sums of "
                              + ("each record's hashed n-grams as a vector of length 1 (GPT-2's features get no "
                                 "weight) " if proto.get("ngram_share", 0) >= 1 else
                                 "each record's whitened, unit-length features and hashed n-grams (weights "
                                 f"√{1 - proto['ngram_share']:g} and √{proto['ngram_share']:g}: one vector of length "
                                 "1 per record) " if proto.get("ngram_share") else
                                 "each record's whitened, unit-length features ")
                              + f"plus Gaussian noise (σ {proto['noise_multiplier']:.3f}, sample rate 1, one release"
                              + ("" if proto.get("ngram_share", 0) >= 1 else "; whitening fitted on public text")
                              + ")" + (", before DP-SGD and composed with it by the "
                                                                    "accountant" if t.epochs else
                                                                    ", the only private step")),
                "prototype_noise_multiplier": proto["noise_multiplier"],
                **({"prototype_val_accuracy": proto["val_accuracy"]} if "val_accuracy" in proto else {})}
               if proto else {}),
            **({"estimate": ledger["estimate"]} if "estimate" in ledger else {}),
            "history": ledger["history"],
        }


class _EveryStepSampler(DistributedUniformWithReplacementSampler):
    """Opacus' distributed Poisson sampler, but an empty draw is yielded too (Opacus skips it): every rank
    then takes the same number of steps, and an empty step still adds its share (noise only), as DP-SGD
    and the accountant assume."""

    def __iter__(self):
        indices = torch.arange(self.total_size)[self.rank:self.total_size:self.num_replicas]
        for _ in range(self.num_batches):
            mask = torch.rand(len(indices), generator=self.generator) < self.sample_rate
            yield indices[mask.nonzero(as_tuple=False).reshape(-1)]


def report(model_dir: str | Path) -> str:
    """The model's privacy guarantee in plain words, with its audits: the card's sections (bot/card.py)."""
    from bot.card import privacy_report

    return privacy_report(model_dir)
