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
import functools
import math
import random
import secrets
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
from tqdm.auto import tqdm

from bot import distributed
from bot.data import read_corpus
from bot.pretrain import base_provenance
from bot.train import Trainer, _lr
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
BUNDLED_PUBLIC = Path(__file__).resolve().parents[1] / "bot" / "demo" / "public_banking77.txt"
PROTOTYPE_PUBLIC = 5000  # public texts the prototypes' whitening is fitted on (the first of the public corpus)


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


class DPTrainer(Trainer):
    per_record = True

    def __init__(self, spec, out_dir, **kw):
        spec, self.responses_note = private_spec(spec, kw.get("log", print) if distributed.is_main() else lambda *a: None)
        super().__init__(spec, out_dir, **kw)
        self.p = spec.privacy
        if not 0 < self.p.count_epsilon < self.p.target_epsilon:
            raise ValueError(f"privacy.count_epsilon {self.p.count_epsilon} must be above 0 and below target_epsilon")
        self.n = len(self.train_records)
        if not self.n:
            raise ValueError("no training records left for DP-SGD")
        if not 0 < self.p.prototype_share < 1:
            raise ValueError(f"privacy.prototype_share {self.p.prototype_share} must be above 0 and below 1")
        if self.t.epochs < 0:
            raise ValueError(f"training.epochs {self.t.epochs} must be 0 or more")
        if self.t.rdrop > 0:
            raise ValueError("training.rdrop is not available under DP yet (its two passes per record are not wired "
                             "into the per-record clipping); set it to 0")
        if self.t.weight_average > 0:
            raise ValueError("training.weight_average is not available under DP yet (the Opacus step updates no "
                             "average); set it to 0")
        if self.t.precision == "bf16":
            raise ValueError(f"training.precision {self.t.precision} is not available under DP yet (the per-record "
                             "gradients and their clipping are checked in float32 only); set it to fp32 or auto "
                             "(fp32 under DP)")
        if self.t.pretrain_corpus:
            raise ValueError("training.pretrain_corpus: under DP the LM pre-trains on privacy.public_corpus; "
                             "name the public text there instead")
        if self.t.epochs < 1 and self.p.head_init != "prototype":
            raise ValueError("training.epochs must be 1 or more under DP (0 only with privacy.head_init: prototype, "
                             "where the prototypes are the only private step)")
        self.public_path = Path(self.p.public_corpus) if self.p.public_corpus else BUNDLED_PUBLIC

    def _setup(self, resume: bool) -> None:
        super()._setup(resume)
        ledger = self.state.extra.setdefault("privacy", {})
        if "records_noisy" not in ledger:  # released once per training run (kept in the checkpoint for resuming)
            ledger["records_noisy"] = distributed.from_main(noisy_count(self.n, self.p.count_epsilon) if self.main
                                                            else None)  # one draw, whatever the number of processes
            self._checkpoint()
        self.n_noisy = ledger["records_noisy"]
        self.delta = self.p.delta or default_delta(self.n_noisy)
        if self.delta >= 1 / self.n:
            raise ValueError(f"privacy.delta {self.delta} must be below 1/N (N: the number of training records)")
        self.noise = ("Opacus secure mode (torchcsprng) for the noise and the Poisson sampling" if secure_mode() else
                      "Gaussian noise and Poisson sampling from generators seeded from the operating system's "
                      "CSPRNG at every start, never saved or published (the training seed sets only the model's "
                      "initialisation, the data order of pre-training and the views); " + FLOAT_CAVEAT)
        if not self.t.epochs:  # the prototypes' release is the only private step: no sampling, one noise draw
            self.noise = ("Gaussian noise for the prototypes from a generator seeded from the operating system's CSPRNG "
                          "at every start, never saved or published; no Poisson sampling (no DP-SGD step); "
                          + FLOAT_CAVEAT)
        elif secure_mode() and self.p.head_init == "prototype":
            self.noise += ("; the prototypes' noise is drawn from a generator seeded from the operating system's CSPRNG "
                           "(not torchcsprng), in floating point: " + FLOAT_CAVEAT)

    # ---------------------------------------------------------------- what may see private data
    @functools.cached_property
    def _public(self) -> list[str]:
        return read_corpus(self.public_path)

    def _authored(self) -> list[str]:
        return ([r for i in self.spec.intents.values() for r in i.responses] + list(self.spec.intents)
                + [self.spec.fallback])

    def tokenizer_corpus(self) -> list[str]:
        return self._public + self._authored()

    def pretrain_texts(self) -> list[str]:
        return self._public

    def keep_best(self) -> bool:
        return False

    def outliers(self) -> list[str]:
        return []  # not yet under DP: the outlier loss would need its own place in the per-record accounting

    def calibrate(self) -> bool:
        return False  # a temperature fitted on (private) validation records is not covered by the guarantee

    def index_examples(self) -> bool:
        return False  # features of the training records (the distance rule) are not covered by the guarantee

    def prepare_model(self) -> None:
        conv1d_to_linear(self.model.lm)
        untie(self.model.lm)
        if self.p.lora_rank > 0:  # adapters everywhere + intent head and final norm; LM head frozen
            add_lora(self.model.to(self.device), self.p.lora_rank)
            self.trainable = train_top(self.model, 0, lm_head=False, freeze_rest=False)
        else:
            self.trainable = train_top(self.model, self.p.train_blocks, lm_head=self.t.reply_weight > 0)
        if self.t.reply_weight <= 0:  # no reply loss: the LM head would only ever receive noise
            self.model.lm.get_output_embeddings().weight.requires_grad_(False)
            self.trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]

    # ---------------------------------------------------------------- Opacus
    def start_finetune(self) -> None:
        # Poisson sampling at rate 1/S, S steps an epoch, S from the noisy count only.
        steps = max(1, round(self.n_noisy / self.p.logical_batch))
        ledger = self.state.extra["privacy"]
        budget = self.p.target_epsilon - self.p.count_epsilon
        total_steps = steps * self.t.epochs
        before = []  # the prototype release, first in the accountant's history (made once per run, kept for resuming)
        if "prototype" in ledger:
            before = [(ledger["prototype"]["noise_multiplier"], 1.0, 1)]
        elif self.p.head_init == "prototype":
            before = [(noise_for(self.p.prototype_share * budget if total_steps else budget, self.delta, 1.0, 1), 1.0, 1)]
        # DP-SGD's σ after the prototypes, planned before anything private is touched (an impossible plan fails here)
        sigma_after = 0.0
        if before and total_steps and "history" not in ledger:
            sigma_after = noise_for(budget, self.delta, 1 / steps, total_steps, before)
        if before and "prototype" not in ledger:
            self._prototype_head(before[0][0])
        secure = secure_mode()
        self.engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=secure)
        sampler_rng = self.engine.secure_rng if secure else os_seeded_generator("cpu")
        world = distributed.world()
        loader = DPDataLoader(TensorDataset(torch.arange(self.n)), sample_rate=1 / steps, generator=sampler_rng,
                              distributed=world > 1)
        if world > 1:  # each rank Poisson-samples its part of the records at the same rate (Opacus' DPDDP recipe)
            loader.batch_sampler.__class__ = _EveryStepSampler
            loader.batch_sampler.num_batches = steps
        else:
            loader.batch_sampler.steps = steps
        module = self.model
        if world > 1:
            from opacus.distributed import (
                DifferentiallyPrivateDistributedDataParallel as DPDDP,
            )
            module = DPDDP(self.model)
        common = dict(module=module, optimizer=self.opt, data_loader=loader, criterion=torch.nn.CrossEntropyLoss(),
                      max_grad_norm=self.p.max_grad_norm, poisson_sampling=False, grad_sample_mode="ghost",
                      noise_generator=None if secure else os_seeded_generator(self.device))
        if "history" in ledger:  # resuming: same noise as planned, and the accountant continues its history
            self.dp_model, self.opt, _, self.loader = self.engine.make_private(
                noise_multiplier=ledger["noise_multiplier"], **common)
            self.engine.accountant.history = [tuple(h) for h in ledger["history"]]
        elif before:  # DP-SGD gets what the prototypes left: σ for the composition of both
            self.dp_model, self.opt, _, self.loader = self.engine.make_private(noise_multiplier=sigma_after, **common)
            self.engine.accountant.history = list(before)
        else:
            self.dp_model, self.opt, _, self.loader = self.engine.make_private_with_epsilon(
                target_epsilon=budget, target_delta=self.delta,
                epochs=self.t.epochs, **common)
        # One backward pass per step (safety/bookkeeping.py) on one process; Opacus' two-pass ghost clipping
        # under DPDDP, whose gradient hooks expect it. Same clipped sum either way (tests/test_privacy.py).
        self.bk = None
        if world == 1:
            self.dp_model.remove_hooks()  # Opacus computes no norms: BookKeeping does
            self.bk = BookKeeping(self.model, self.p.max_grad_norm)
        # The mean's divisor, from public numbers too; per rank (the ranks' means are averaged).
        self.opt.expected_batch_size = max(1, round(self.n_noisy / steps)) / world
        self.sample_rate = 1 / steps
        self._update_ledger()
        self.log(f"DP-SGD: noise multiplier {self.opt.noise_multiplier:.3f}, sample rate {self.sample_rate:.4f}, "
                 f"clip {self.p.max_grad_norm}, target ε {self.p.target_epsilon} (of which {self.p.count_epsilon} for "
                 f"the noisy record count) at δ {self.delta:.1e} over {self.t.epochs} epochs of about "
                 f"{self.n_noisy} records")

    def _prototype_head(self, sigma: float) -> None:
        """The intent head from noisy per-intent prototypes (safety/prototypes.py), noise multiplier σ."""
        from safety.prototypes import prototype_head

        intent_id = {n: i for i, n in enumerate(self.model.intents)}
        weight = distributed.from_main(prototype_head(
            self.model, self.enc, [r.text for r in self.train_records], [intent_id[r.intent] for r in self.train_records],
            [served_text(t, redact=False) for t in self._public[:PROTOTYPE_PUBLIC]], sigma, os_seeded_generator("cpu")) if self.main else None)
        with torch.no_grad():
            self.model.score.weight.copy_(weight.to(self.model.score.weight))
        self.state.extra["privacy"]["prototype"] = {"noise_multiplier": sigma}  # in the history as (σ, 1.0, 1)
        self.log(f"DP prototypes: intent head from per-intent sums of unit feature vectors plus Gaussian noise "
                 f"(σ {sigma:.3f}, ε {epsilon_for([(sigma, 1.0, 1)], self.delta):.2f} alone at δ {self.delta:.1e})")
        self._checkpoint()

    def _update_ledger(self) -> None:
        history = [list(h) for h in self.engine.accountant.history]
        self.state.extra["privacy"].update({
            "noise_multiplier": self.opt.noise_multiplier, "sample_rate": self.sample_rate, "history": history,
            "epsilon": (epsilon_for(history, self.delta) if history else 0.0) + self.p.count_epsilon,
        })

    def _checkpoint(self) -> None:
        if hasattr(self, "engine"):
            self._update_ledger()
        super()._checkpoint()

    def _optimizer_to_save(self):
        return getattr(self.opt, "original_optimizer", self.opt)

    def _batch(self, idx: list[int]):
        """One sequence per sampled record: a view of its text, its intent position and reply labels."""
        intent_id = {n: i for i, n in enumerate(self.model.intents)}
        seqs, labels, pos, ys = [], [], [], []
        for i in idx:
            r = self.train_records[i]
            rng = random.Random(f"{self.t.seed}-dp-{self.state.step}-{i}")  # per record: the same on any rank
            ids, lab, at = self.enc.joint(self.view(i, r, rng), r.intent, r.reply if self.t.reply_weight > 0 else None,
                                          self.spec.settings.max_reply_tokens)
            seqs.append(ids), labels.append(lab), pos.append(at), ys.append(intent_id[r.intent])
        b = self.enc.pad_batch(seqs, labels)
        b = {k: v.to(self.device) for k, v in b.items()}
        return b, torch.tensor(pos, device=self.device), torch.tensor(ys, device=self.device)

    def per_record_loss(self, b, pos, y) -> torch.Tensor:
        """Intent CE + reply_weight × mean reply-token CE, one value per record."""
        intent_logits, lm_logits = self.dp_model(b["input_ids"], b["attention_mask"], position_ids(b["attention_mask"]), pos)
        loss = F.cross_entropy(intent_logits, y, reduction="none", label_smoothing=self.t.label_smoothing)
        labels = b["labels"][:, 1:]
        tok = F.cross_entropy(lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]), labels.reshape(-1),
                              reduction="none", ignore_index=-100).view(labels.shape)
        n_tok = (labels != -100).sum(1)
        reply = tok.sum(1) / n_tok.clamp_min(1)
        return loss + self.t.reply_weight * reply

    def _finetune_epoch(self) -> None:
        steps_per_epoch = len(self.loader)
        if self.state.batch >= steps_per_epoch:
            return  # resumed from a checkpoint taken at this epoch's last step: nothing left to do
        total = steps_per_epoch * self.t.epochs
        last = math.nan
        bar = tqdm(total=steps_per_epoch, initial=self.state.batch, disable=not self.progress,
                   desc=f"DP fine-tune {self.state.epoch + 1}/{self.t.epochs}")
        with BatchMemoryManager(data_loader=self.loader, max_physical_batch_size=self.p.physical_batch,
                                optimizer=self.opt) as loader:
            for (idx,) in loader:
                for g in self.opt.param_groups:
                    g["lr"] = _lr(self.state.step - self.state.stage_start, total, self.t.learning_rate)
                if len(idx):
                    b, pos, y = self._batch(idx.tolist())
                    if self.bk:
                        with self.bk.recording():
                            per_record = self.per_record_loss(b, pos, y)
                        self.bk.backward(per_record)
                    else:
                        per_record = self.per_record_loss(b, pos, y)
                        DPTensorFastGradientClipping(self.dp_model, self.opt, per_record, "mean").backward()
                    last = per_record.mean().item()
                else:  # an empty Poisson batch: the step adds noise only, as DP-SGD prescribes
                    for p in self.opt.params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                self.opt.step()
                self.opt.zero_grad()
                if self.opt._is_last_step_skipped:
                    continue
                self.state.step += 1
                self.state.batch += 1
                bar.update(1)
                bar.set_postfix(loss=f"{last:.3f}", eps=f"{self.engine.get_epsilon(self.delta):.2f}")
                if self.t.checkpoint_every and self.state.step % self.t.checkpoint_every == 0:
                    self._checkpoint()
                if self.state.batch >= steps_per_epoch:
                    break  # right after a logical step: asking the loader for more would queue a skip signal
        bar.close()

    # ---------------------------------------------------------------- saving
    def _save_final(self) -> None:
        if getattr(self, "bk", None):
            self.bk.close()
        merge_lora(self.model.lm)
        linear_to_conv1d(self.model.lm)
        super()._save_final()

    def card_counts(self) -> bool:
        return False  # exact counts of private records are not published (COUNT_NOTE)

    def card_sections(self) -> dict:
        ledger = self.state.extra.get("privacy", {})
        if "history" not in ledger:
            return {}
        epsilon_sgd = epsilon_for(ledger["history"], self.delta)
        proto = ledger.get("prototype")
        steps = sum(h[2] for h in ledger["history"]) - (1 if proto else 0)  # DP-SGD's steps; the release is apart
        return {"privacy": {
            "dp": True, "epsilon": epsilon_sgd + self.p.count_epsilon, "delta": self.delta,
            "target_epsilon": self.p.target_epsilon, "epsilon_sgd": epsilon_sgd, "epsilon_count": self.p.count_epsilon,
            "accountant": "Opacus PRV (Poisson-subsampled Gaussian; the noisy count's ε added by basic composition)",
            "noise_multiplier": ledger["noise_multiplier"],
            "sample_rate": ledger["sample_rate"], "max_grad_norm": self.p.max_grad_norm, "steps": steps,
            "epochs": self.t.epochs, "logical_batch": self.p.logical_batch, "physical_batch": self.p.physical_batch,
            "processes": distributed.world(),
            "records_noisy": ledger["records_noisy"],
            "unit": ("one distinct training utterance (after normalising case and spaces) with its intent and its "
                     "reply target; whether it is held out for validation and which reply it trains on depend only "
                     "on a keyed hash of its own text, so adding or removing it changes no other record"),
            "noise": self.noise,
            "published_counts": COUNT_NOTE,
            "clipping": "per record, flat, ghost clipping" + (" (book-keeping: one backward pass)"
                                                              if getattr(self, "bk", None) else ""), "lm_head": "untied from the input embeddings" + (
                "; frozen (no reply loss)" if self.t.reply_weight <= 0 else ""),
            "trained": ("the intent head only (the prototypes); every other weight is the public base's, unchanged"
                        if not self.t.epochs else
                        f"LoRA adapters of rank {self.p.lora_rank} on every attention and MLP projection "
                        "(merged into the saved weights), final norm and intent head; the rest is frozen at its "
                        "public pre-training" if self.p.lora_rank > 0 else
                        "all parameters" + (" but the LM head" if self.t.reply_weight <= 0 else "")
                        if self.p.train_blocks < 0 else
                        f"top {self.p.train_blocks} transformer block(s), final norm and intent head"
                        + (" and LM head" if self.t.reply_weight > 0 else "")
                        + "; the rest is frozen at its public pre-training"),
            "covers": f"the training utterances of bot '{self.spec.name}' (intent head and reply model)",
            "public_data": (f"tokenizer and LM pre-training: {self.public_path.name} (public) plus the bot's own "
                            "authored responses and intent names" if self.spec.model.base == "scratch"
                            else base_provenance(self.spec.model.base)),
            "not_covered": "validation utterances (held out by the keyed hash; only their accuracy is reported) and "
                           "test utterances; dialogue turns that are not also examples, and multi-turn context (not used under DP)"
                           + (f"; {self.responses_note}" if self.responses_note else ""),
            **({"head_init": (f"noisy per-intent prototypes: the sums of each record's whitened, unit-length features "
                              f"plus Gaussian noise (σ {proto['noise_multiplier']:.3f}, sample rate 1, one release; "
                              "whitening fitted on public text)" + (", before DP-SGD and composed with it by the "
                                                                    "accountant" if self.t.epochs else
                                                                    ", the only private step")),
                "prototype_noise_multiplier": proto["noise_multiplier"]} if proto else {}),
            "history": ledger["history"],
        }}


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
    """The model's privacy guarantee in plain words, from its card."""
    from bot.card import audit_lines, private_steps
    from bot.model import read_card

    card = read_card(model_dir)
    if not card:
        raise FileNotFoundError(f"{model_dir}: no candor.json here; is this a Candor model directory?")
    p = card.get("privacy")
    name = card.get("bot", {}).get("name", model_dir)
    if not p or not p.get("dp"):
        return "\n".join([f"{name}: trained WITHOUT differential privacy. No privacy guarantee: the model may have "
                          "memorised its training utterances. Retrain with `candor train --dp` for one.",
                          *audit_lines(card)])
    return "\n".join([
        f"{name}: trained with differential privacy ("
        + ("DP-SGD, Opacus" if p.get("epochs", 1) else "one Gaussian release of noisy per-intent prototypes") + ").",
        f"Guarantee: (ε = {p['epsilon']:.2f}, δ = {p['delta']:.2g})-differential privacy for each training record "
        f"({p['unit']}).",
        f"In plain words: adding or removing any one training utterance changes the probability of getting this "
        f"model by at most a factor of e^{p['epsilon']:.2f} ≈ {math.exp(p['epsilon']):.1f}, except with probability "
        f"{p['delta']:.2g}.",
        *([f"ε = {p['epsilon_sgd']:.2f} for {private_steps(p)} + "
           f"{p['epsilon_count']:g} for the noisy record count (about "
           f"{p['records_noisy']} training utterances)."] if "records_noisy" in p else
          ["This model was trained before Candor hardened its DP noise and counts (the noise may be reproducible "
           "from the published seed; exact counts are published): retrain it for the full guarantee."]),
        f"Covers: {p['covers']}.",
        f"Public data (no guarantee needed): {p['public_data']}.",
        f"Not covered: {p['not_covered']}.",
        *([f"Randomness: {p['noise']}.", f"Published about the data: {p['published_counts']}."]
          if "noise" in p else []),
        *([f"Trained privately: {p['trained']}."] if p.get("trained") else []),
        *([f"Intent head started from {p['head_init']}."] if p.get("head_init") else []),
        (f"How: {p['accountant']} accountant; noise multiplier {p['noise_multiplier']:.3f}, sample rate "
         f"{p['sample_rate']:.4f}, clipping norm {p['max_grad_norm']}, {p['steps']} steps over {p['epochs']} epochs "
         f"({p['clipping']}; LM head {p['lm_head']})." if p["epochs"] else
         f"How: {p['accountant']} accountant; no DP-SGD step: the prototype release is the only private step."),
        "A record that repeats (the same person writing several utterances) is protected only "
        "group-wise: k such records get at most k·ε.",
        *audit_lines(card),
    ])
