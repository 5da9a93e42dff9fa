"""Training: (offline default) LM pre-training on the bot's text, then joint intent + reply fine-tuning.

Records are trained on as the served bot reads messages: `read` (from the layer above: the serving
guard and PII redaction) is applied to every utterance, to the text the tokenizer and the LM
pre-training see and to every view, so placeholders such as `<ACCOUNT_NUMBER>` are learned, not met
for the first time in production, and raw PII never reaches the weights.

Each fine-tuning step the classifier sees one *view* of each record it trains on: the first of
`views` (pluggable, e.g. TextAttack augmentation or adversarial examples from safety/) that offers
one, else the noisy view (word dropout/insertion). A view replaces its record for that step, never
adds one, so the DP trainer gets one sequence per sampled record whatever the views are. The view is then
placed in a conversation (`Trainer.in_context`): read after earlier user turns, as the served classifier reads
a message (`settings.classify_context`), or alone.

Checkpoints (safetensors + JSON, never pickles) go to `<out>.checkpoints/` every `checkpoint_every`
steps and at each epoch's end; `resume=True` continues from the last one. The final model
directory appears only when training finished.

Started by torchrun as several processes (bot/distributed.py), each process trains on its share of every
batch and the gradients are averaged before the one step; rank 0 alone writes.

Private training is the same loop, handed what DP-SGD changes (`privacy`, from safety/privacy.py, found through
the `candor.privacy` entry point so that the core imports nothing above it): a Poisson sampler, a step that clips
each record's gradient and adds noise, an accountant, and a `Policy` that says what plain training may do with
the records and DP may not. `train(spec)` trains privately whenever the bot file says `privacy.enabled`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from bot import card as cards
from bot import distributed
from bot import model as models
from bot import neighbours
from bot.classify import fit_temperature, predict_features, predict_logits, predict_proba
from bot.data import Encoder, Record, corpus, earlier, outlier_texts, read_corpus, records, split
from bot.followups import follow_up
from bot.io import atomic_dir, atomic_write_json
from bot.spec import BotFileError, BotSpec, validate

# How often a single-turn record is read in a conversation (`Trainer.in_context`), when the bot's classifier reads
# earlier turns (`settings.classify_context`).
FOLLOW_UP_SHARE = 0.15  # as the earlier turn of a generic follow-up that keeps its intent
SWITCH_SHARE = 0.25  # after another intent's example: the new request decides
OUTLIERS_IN_CONTEXT = 0.5  # outlier-exposure items read in a conversation, per outlier text read alone
FOLLOW_UP_ALONE = 0.4  # of those: a generic follow-up read alone; the others: an outlier text after an example


@dataclass
class State:
    """Where training stands; saved as JSON with every checkpoint."""

    stage: str = "pretrain"  # "pretrain" -> "finetune" -> "done"
    epoch: int = 0
    batch: int = 0  # batches done in this epoch
    step: int = 0
    stage_start: int = 0  # global step at which this stage began (the LR schedule counts from it)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    spec_hash: str = ""
    resumed_from: list[int] = field(default_factory=list)
    seconds: float = 0.0
    average_updates: int = 0  # updates in the weight average saved beside this checkpoint
    privacy: dict = field(default_factory=dict)  # the DP ledger (safety/privacy.py: the noisy count, the accountant)
    adversarial: dict = field(default_factory=dict)  # adversarial training's examples (safety/adversarial.py)


@dataclass(frozen=True)
class Policy:
    """What a training run may do with its records. Plain training may do all of it; DP-SGD (safety/privacy.py)
    hands the loop a policy that forbids what its guarantee would not cover."""

    per_record: bool = False  # each record on its own: no other record's text as an earlier turn, a strict split
    use_validation: bool = True  # validation records may shape the model (best-epoch selection, the temperature)
    index_examples: bool = True  # the model may ship its training examples' features (the distance rule)
    publish_counts: bool = True  # the card may publish exact counts of records
    outlier_exposure: bool = True  # outlier text trained toward no intent (DP has no place for it in its accounting)


PLAIN = Policy()


def private_training(spec: BotSpec, log=print):
    """The DP-SGD engine for a bot file with `privacy.enabled` (safety/privacy.py: DPSGD, installed as the
    `candor.privacy` entry point `dp-sgd`). Never falls back to plain training."""
    found = list(entry_points(group="candor.privacy", name="dp-sgd"))
    if not found:
        raise RuntimeError("privacy.enabled, but no DP-SGD engine is installed (entry point 'candor.privacy: dp-sgd'); "
                           "reinstall candor (pip install -e .) rather than train without the guarantee")
    return found[0].load()(spec, log=log)


def spec_hash(spec: BotSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checkpoint_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoints")


def _lr(step: int, total: int, peak: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))))


@functools.lru_cache(maxsize=8)
def _order(n: int, seed: int, stage: str, epoch: int) -> list[int]:
    salt = int(hashlib.sha256(stage.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)
    return torch.randperm(n, generator=g).tolist()


def _noisy_view(text: str, p: float, rng: random.Random, vocab: list[str] = ()) -> str:
    """A view of the utterance: each word dropped with chance p (at least one kept) and, when a
    vocabulary is given, a random word from it inserted before each word with chance p, so that
    the classifier learns to look past words it has not seen with an intent."""
    words = text.split()
    if p <= 0 or len(words) < 2:
        return text
    out = []
    for w in words:
        if vocab and rng.random() < p:
            out.append(rng.choice(vocab))
        if rng.random() >= p:
            out.append(w)
    return " ".join(out) if out else rng.choice(words)


class WeightAverage:
    """Polyak averaging: an exponential moving average of the trainable weights, updated after every fine-tuning
    step. Its decay is warmed up as (1 + t) / (10 + t) over the first steps t, so a short run is not pulled back
    toward the weights it started from."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), 1 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for n, p in self.params.items():
            p.copy_(self.shadow[n])

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own ones again after it."""
        live = {n: p.detach().clone() for n, p in self.params.items()}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    def save(self, path: Path) -> None:
        save_file({n: t.contiguous().cpu() for n, t in self.shadow.items()}, str(path))

    @torch.no_grad()
    def load(self, path: Path, updates: int) -> None:
        from bot.model import check_safetensors

        check_safetensors(path)
        for n, t in load_file(str(path)).items():
            self.shadow[n].copy_(t)
        self.updates = updates


class View(Protocol):
    """A pluggable view of training records (see the module docstring)."""

    def start_epoch(self, trainer: "Trainer") -> None:
        """Called before every fine-tuning epoch (and again when one resumes); may look at the model."""

    def __call__(self, index: int, record: Record, rng: random.Random) -> str | None:
        """The text to train on instead of `record.text` this step, or None to leave it to the next view."""

    def describe(self) -> dict:
        """What this view did, for the model card."""

    def may_keep(self, epoch: int) -> bool:
        """Whether the weights after fine-tuning epoch `epoch` (0-based) may be kept as the best ones."""


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    tensors = {"rng": torch.get_rng_state()}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path))


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from bot.model import check_safetensors

    check_safetensors(path)
    tensors = load_file(str(path))
    torch.set_rng_state(tensors.pop("rng"))
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def served(r: Record, read) -> Record:
    """The record as the served bot reads it (`read`: guard and PII redaction, from the layer above)."""
    return dataclasses.replace(r, text=read(r.text), context=[dataclasses.replace(t, user=read(t.user))
                                                              for t in r.context])


def training_split(spec: BotSpec, read=None, per_record: bool = False) -> tuple[list[Record], list[Record]]:
    """(training, validation) records exactly as the trainer makes them; `per_record` as for DP training
    (no multi-turn context, no per-intent fix-up of the split). The membership audit uses it too."""
    read = read or (lambda text: text)
    recs = [served(r, read) for r in records(spec, not per_record, spec.training.seed)]
    return split(recs, spec.training.val_fraction, spec.training.seed, keep_one=not per_record)


class Trainer:
    def __init__(self, spec: BotSpec, out_dir: str | Path, device: str | None = None, progress: bool = True,
                 log=print, views: list[View] = (), read=None, extra_records: list[Record] = (), privacy=None):
        """`privacy`: what private training hands the loop (see the module docstring); by default DP-SGD when the
        bot file says `privacy.enabled`, else none."""
        errors = [p for p in validate(spec) if p.severity == "error"]
        if errors:
            raise BotFileError(errors)
        self.device = distributed.init(pick_device(device))
        self.main = distributed.is_main()
        self.progress, self.log = progress and self.main, log if self.main else (lambda *a, **k: None)
        if privacy is None and spec.privacy.enabled:
            privacy = private_training(spec, log=self.log)
        self.privacy, self.policy = privacy, privacy.policy if privacy else PLAIN
        spec = privacy.spec if privacy else spec  # e.g. without the responses DP treats as private
        self.spec, self.training = spec, spec.training
        self.views, self.read = list(views), read or (lambda text: text)
        self.out_dir, self.ckpt = Path(out_dir), checkpoint_dir(out_dir)
        self.train_records, self.val_records = training_split(spec, self.read, self.policy.per_record)
        # Records planted in training only (the canary audit), read as served like every other record.
        self.extra_records = [served(r, self.read) for r in extra_records]
        self.train_records += self.extra_records
        self.reply_records = [r for r in self.train_records if r.reply]
        self.average: WeightAverage | None = None  # set when fine-tuning starts (`_start_average`)
        self.classify_context = 0 if self.policy.per_record else spec.settings.classify_context
        if self.policy.per_record and spec.settings.classify_context:
            self.log("settings.classify_context: the model is trained, and will be served, reading each message "
                     "alone (another record's text as an earlier turn would break the per-record guarantee)")
        self.precision = self._precision()

    def _precision(self) -> str:
        """`training.precision` as this run uses it, "fp32" or "bf16": "auto" is bf16 where the device computes in
        bfloat16 natively (a GPU with it; a CPU with AVX512-BF16 or AMX) and fp32 elsewhere and under DP."""
        cpu = self.device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        native = torch.cuda.is_bf16_supported(including_emulation=False) if self.device.type == "cuda" else cpu
        forced = os.environ.get("CANDOR_TRAINING_PRECISION", "")
        if forced in ("fp32", "bf16") and self.training.precision != "bf16" and not self.privacy:
            # The test suite's `--training-precision`: every run the bot file leaves in fp32/auto, except DP (fp32).
            self.log(f"training.precision {forced}: set by CANDOR_TRAINING_PRECISION")
            return forced
        if self.training.precision == "auto":
            return "bf16" if native and not self.privacy else "fp32"
        if self.training.precision == "bf16" and self.device.type == "cuda" and not native:
            raise ValueError("training.precision bf16: this GPU has no bfloat16; set it to fp32 (or auto)")
        if self.training.precision == "bf16" and not native:
            self.log("training.precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so it is "
                     "emulated and likely slower than fp32 (training.precision auto would use fp32 here)")
        return self.training.precision

    # ------------------------------------------------------------ setup / resume
    def _latest(self) -> Path | None:
        pointer = self.ckpt / "latest.json"
        return self.ckpt / json.loads(pointer.read_text())["dir"] if pointer.is_file() else None

    def _setup(self, resume: bool) -> None:
        torch.manual_seed(self.training.seed)
        latest = distributed.from_main(self._latest() if resume else None)
        if latest and not (latest / "state.json").is_file():
            raise SystemExit(f"{latest}: not readable by rank {distributed.rank()}; to resume on several machines, "
                             "put the output directory on storage every machine can read")
        if latest:
            self.state = State(**json.loads((latest / "state.json").read_text()))
            if self.state.spec_hash != spec_hash(self.spec):
                raise SystemExit(f"{self.ckpt}: checkpoint was made from a different bot file or settings; "
                                 "rerun without --resume to start over")
            self.tok = AutoTokenizer.from_pretrained(self.ckpt / "tokenizer")
        else:
            self.state = State(spec_hash=spec_hash(self.spec))
            if self.main:
                if resume:
                    self.log(f"no checkpoint in {self.ckpt}; starting from scratch")
                elif self._latest():
                    self.log(f"starting over: discarding the checkpoint in {self.ckpt} (pass --resume to continue it)")
                shutil.rmtree(self.ckpt, ignore_errors=True)
                self.tok = models.make_tokenizer(self.spec.model, self.tokenizer_corpus())
                self.ckpt.mkdir(parents=True, exist_ok=True)
                self.tok.save_pretrained(self.ckpt / "tokenizer")
            self._share_tokenizer()
        if self.spec.model.base != "scratch" and self.state.stage == "pretrain":
            self.state.stage = "finetune"  # a pretrained LM needs no pre-training on our text
        self.enc = Encoder(self.tok, self.spec.model.max_length)
        self.model = models.build(self.spec.model, self.tok, list(self.spec.intents)).to(self.device)
        if latest and self.state.stage != "pretrain":
            self._finetuned_model()
        self.opt = self._optimizer()
        if latest:
            models.check_safetensors(latest / "model.safetensors")
            load_model(self.model, str(latest / "model.safetensors"), device=str(self.device))
            _load_optimizer(self.opt, latest / "optimizer.safetensors")
            self.state.resumed_from.append(self.state.step)
            self.log(f"resumed from step {self.state.step} ({self.state.stage}, epoch {self.state.epoch + 1}, "
                     f"batch {self.state.batch})")
        distributed.broadcast_parameters(self.model)  # every rank starts from rank 0's weights
        if self.privacy:
            self.privacy.setup(self)  # the noisy record count (released once per run, kept for resuming) and δ

    def _share_tokenizer(self) -> None:
        """Rank 0's new tokenizer on every rank (its files are sent, so no shared storage is needed)."""
        if distributed.world() == 1:
            return
        files = distributed.from_main({f.name: f.read_bytes() for f in (self.ckpt / "tokenizer").iterdir()}
                                      if self.main else None)
        if not self.main:
            where = Path(tempfile.mkdtemp(prefix="candor-tokenizer-"))
            for name, data in files.items():
                (where / name).write_bytes(data)
            self.tok = AutoTokenizer.from_pretrained(where)
            shutil.rmtree(where, ignore_errors=True)

    @functools.cached_property
    def vocab(self) -> list[str]:
        """Words a noisy view may insert: those of the text the tokenizer is fitted on."""
        return sorted({w for t in self.tokenizer_corpus() for w in t.split()})

    def view(self, index: int, record: Record, rng: random.Random) -> str:
        """The text training record `index` is seen as this step (see the module docstring), read as served."""
        for v in self.views:
            text = v(index, record, rng)
            if text is not None:
                return self.read(text)
        return _noisy_view(record.text, self.training.word_dropout, rng, self.vocab)

    def in_context(self, record: Record, text: str, rng: random.Random) -> tuple[list[str], str]:
        """(earlier user texts, message): how the classifier reads a training record this step, seen as
        `text`. A record from a dialogue is read after its own earlier turns. Another is, with chance
        `FOLLOW_UP_SHARE`, the earlier turn of a generic follow-up (bot/followups.py) that keeps its intent, or,
        with chance `SWITCH_SHARE`, read after another intent's example (a new request outweighs the old one);
        else alone. Under DP every record is read alone (`Policy.per_record`)."""
        n = self.classify_context
        if not n:
            return [], text
        if record.context:
            return earlier(record.context, n), text
        roll = rng.random()
        if roll < FOLLOW_UP_SHARE:
            return [text], self.read(follow_up(rng))
        if roll < FOLLOW_UP_SHARE + SWITCH_SHARE and len(self.train_records) > 1:
            other = self.train_records[rng.randrange(len(self.train_records))]
            if other.intent != record.intent:
                return [other.text], text
        return [], text

    def outlier_in_context(self, rng: random.Random) -> tuple[list[str], str]:
        """(earlier user texts, message): one of the outlier-exposure items added when the classifier reads earlier
        turns. With chance `FOLLOW_UP_ALONE` a generic follow-up read alone (alone, it names no intent), else an
        outlier text read after a training example (an unknown question after a known request is still unknown)."""
        if rng.random() < FOLLOW_UP_ALONE:
            return [], self.read(follow_up(rng))
        outliers = self.outliers()
        return [self.train_records[rng.randrange(len(self.train_records))].text], outliers[rng.randrange(len(outliers))]

    def reply_view(self, r: Record) -> Record:
        """The record as the reply prompt reads it: its last `settings.context_turns` turns, as `Bot.turns` gives."""
        k = self.spec.settings.context_turns
        return dataclasses.replace(r, context=r.context[-k:] if k else [])

    def contexts(self, recs: list[Record]) -> list[list[str]]:
        """The earlier user texts each record is read after when it is validated (its dialogue's, if any)."""
        return [earlier(r.context, self.classify_context) for r in recs]

    @functools.cached_property
    def _outliers(self) -> tuple[list[str], int]:
        texts, dropped = outlier_texts(self.spec)
        return [self.read(t) for t in texts], dropped

    @functools.cached_property
    def _corpus(self) -> list[str]:
        planted = [t for r in self.extra_records for t in (r.text, r.reply) if t]
        return [self.read(t) for t in corpus(self.spec)] + planted

    # ------------------------------------------------------------ what the run may read (`Policy`)
    def tokenizer_corpus(self) -> list[str]:
        """The text the tokenizer is fitted on: the bot's own, or under DP public and authored text only."""
        return self.privacy.tokenizer_texts if self.privacy else self._corpus

    def pretrain_texts(self) -> list[str]:
        """The text the LM pre-trains on: the bot's own and `training.pretrain_corpus`, or under DP public text."""
        return self.privacy.pretrain_texts if self.privacy else self._corpus + self._pretrain_public

    @functools.cached_property
    def _pretrain_public(self) -> list[str]:
        """`training.pretrain_corpus`, read as served like the bot's own text."""
        return [self.read(t) for t in read_corpus(self.training.pretrain_corpus)] if self.training.pretrain_corpus else []

    def _optimizer(self) -> torch.optim.Optimizer:
        # fused: one kernel per step for all parameters (PyTorch's default on CPU is a Python loop over them)
        return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.training.learning_rate,
                                 weight_decay=0.01, fused=self.device.type in ("cpu", "cuda"))

    def _finetuned_model(self) -> None:
        """The model as fine-tuning trains it: under DP converted for per-record clipping (LoRA, frozen layers)."""
        if self.privacy:
            self.privacy.prepare_model(self.model)

    def outliers(self) -> list[str]:
        """Text that belongs to no intent, trained toward a uniform intent distribution (outlier exposure)."""
        return self._outliers[0] if self.policy.outlier_exposure else []

    @property
    def outlier_batch(self) -> int:
        """Outlier texts per fine-tuning step (0 when outlier exposure is off)."""
        return max(1, self.training.batch_size // 2) if self.outliers() else 0

    @property
    def outliers_in_context(self) -> int:
        """Outlier-exposure items per step, on top of `outlier_batch`, read in a conversation (`outlier_in_context`):
        when the classifier reads earlier turns."""
        return int(self.outlier_batch * OUTLIERS_IN_CONTEXT) if self.classify_context else 0

    def _start_average(self) -> None:
        """The moving average of the weights fine-tuning keeps (`training.weight_average`; the DP trainer refuses
        it), restored from the last checkpoint when resuming."""
        if self.state.stage not in ("finetune", "done") or not self.training.weight_average:
            return
        self.average = WeightAverage(self.model, self.training.weight_average)
        latest = self._latest()
        if self.state.step > self.state.stage_start and latest and (latest / "average.safetensors").is_file():
            self.average.load(latest / "average.safetensors", self.state.average_updates)

    def _averaged(self):
        """A block in which the model holds the weights fine-tuning keeps: the averaged ones, if any."""
        return self.average.applied() if self.average else contextlib.nullcontext()

    def checkpoint(self) -> None:
        """Write a complete step-N/ folder, then point latest.json at it: a crash at any moment leaves
        the previous checkpoint intact. Rank 0 alone writes."""
        if not self.main:
            return
        step_dir = self.ckpt / f"step-{self.state.step:08d}-{uuid.uuid4().hex[:6]}"
        step_dir.mkdir(parents=True)
        save_model(self.model, str(step_dir / "model.safetensors"))
        if self.average:
            self.average.save(step_dir / "average.safetensors")
            self.state.average_updates = self.average.updates
        if self.privacy:
            self.state.privacy = self.privacy.ledger()
        # under DP the optimizer Opacus wraps (its state is the plain one's)
        _save_optimizer(getattr(self.opt, "original_optimizer", self.opt), step_dir / "optimizer.safetensors")
        atomic_write_json(step_dir / "state.json", dataclasses.asdict(self.state))
        atomic_write_json(self.ckpt / "latest.json", {"dir": step_dir.name})
        for old in self.ckpt.glob("step-*"):
            if old != step_dir:
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ stages
    def _batches(self, lengths: list[int], stage: str, epoch: int) -> list[list[int]]:
        """Shuffled batches of similar length (less padding), same for a given seed and epoch."""
        order = _order(len(lengths), self.training.seed, stage, epoch)
        bs, pool = self.training.batch_size, self.training.batch_size * 50
        batches = []
        for k in range(0, len(order), pool):
            chunk = sorted(order[k:k + pool], key=lambda i: lengths[i])
            batches += [chunk[j:j + bs] for j in range(0, len(chunk), bs)]
        perm = _order(len(batches), self.training.seed, stage + "-batches", epoch)
        return [batches[i] for i in perm]

    def _set_lr(self, total_steps: int) -> None:
        """Warm-up then cosine decay over the stage's `total_steps`."""
        for g in self.opt.param_groups:
            g["lr"] = _lr(self.state.step - self.state.stage_start, total_steps, self.training.learning_rate)

    def _step(self, loss: torch.Tensor) -> None:
        """One optimizer step of plain training; `loss` is this rank's share of the batch's mean loss
        (bot/distributed.py). Under DP `privacy.step` takes its place."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.model.parameters())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()

    def _stepped(self) -> None:
        """Count a step that changed the weights; checkpoint when one is due."""
        if self.average:
            self.average.update()
        self.state.step += 1
        self.state.batch += 1
        if self.training.checkpoint_every and self.state.step % self.training.checkpoint_every == 0:
            self.checkpoint()

    def _autocast(self):
        """The forward passes of a training step (`training.precision`); backward and the step run outside."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _to(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _pretrain_epoch(self, texts: list[str]) -> None:
        batches = self._batches([len(t) for t in texts], "pretrain", self.state.epoch)
        total = len(batches) * self.training.pretrain_epochs
        bar = tqdm(batches, desc=f"pre-train {self.state.epoch + 1}/{self.training.pretrain_epochs}",
                   disable=not self.progress, initial=self.state.batch, total=len(batches))
        for idx in batches[self.state.batch:]:
            seqs = {i: self.enc.lm(texts[i]) for i in idx}
            part, weight = distributed.share(idx, [len(seqs[i]) - 1 for i in idx])  # the loss is a mean over tokens
            b = self._to(self.enc.pad_batch([seqs[i] for i in part]))
            with self._autocast():
                loss = self.model.lm_loss(**b)
            self._set_lr(total)
            self._step(loss * weight)
            self._stepped()
            bar.update(1)
            bar.set_postfix(lm_loss=f"{loss.item():.3f}")
        bar.close()

    def _finetune_epoch(self) -> None:
        """One epoch of fine-tuning. Plain: shuffled batches of records of similar lengths, each one step. DP
        (`privacy`): Poisson samples of records, in physical parts; a step when a sample is complete, its
        gradients clipped per record and noised."""
        dp = self.privacy
        batches = None if dp else self._batches([len(r.text) for r in self.train_records], "finetune",
                                                self.state.epoch)
        per_epoch = dp.steps_per_epoch if dp else len(batches)
        if self.state.batch >= per_epoch:
            return  # resumed from a checkpoint taken at this epoch's last step: nothing left to do
        total = per_epoch * self.training.epochs
        bar = tqdm(total=per_epoch, initial=self.state.batch, disable=not self.progress,
                   desc=f"{'DP ' if dp else ''}fine-tune {self.state.epoch + 1}/{self.training.epochs}")
        for batch in (dp.batches() if dp else batches[self.state.batch:]):  # record indices
            self._set_lr(total)
            if dp:
                if not dp.step(self, batch):
                    continue  # one physical part of a Poisson sample: the step comes with its last part
                shown = {"loss": f"{dp.last_loss:.3f}", "ε spent": f"{dp.spent():.2f}"}
            else:
                loss, shown = self._loss(batch)
                self._step(loss)
            self._stepped()
            bar.update(1)
            bar.set_postfix(**shown)
            if self.state.batch >= per_epoch:
                break  # right after a logical step: asking DP's loader for more would queue a skip signal
        bar.close()

    def _loss(self, batch: list[int]) -> tuple[torch.Tensor, dict]:
        """(this rank's share of the loss, what the progress bar shows) for one plain fine-tuning batch of training
        records: the intent loss of one view of each, outlier exposure and the reply loss."""
        t, k = self.training, self.state.batch
        intent_id = {n: i for i, n in enumerate(self.model.intents)}
        part, weight = distributed.share(batch)
        recs = [self.train_records[i] for i in part]
        rngs = [random.Random(f"{t.seed}-{self.state.epoch}-{k}-{i}") for i in part]
        seen = [self.in_context(r, self.view(i, r, g), g) for i, r, g in zip(part, recs, rngs)]
        b = self._to(self.enc.pad_batch([self.enc.classify(text, earlier) for earlier, text in seen]))
        y = torch.tensor([intent_id[r.intent] for r in recs], device=self.device)
        with self._autocast():
            ce, kl = self._intent_loss(b, y)
        loss, shown = (ce + t.rdrop * kl) * weight, {"intent_loss": f"{ce.item():.3f}"}
        outliers, per_batch = self.outliers(), self.outlier_batch
        if per_batch:  # cross-entropy to the uniform distribution over intents (Hendrycks et al., 2019)
            order = _order(len(outliers), t.seed, "outliers", self.state.epoch)
            picks, oe_weight = distributed.share(range(per_batch + self.outliers_in_context))
            seen_o = [([], outliers[order[(k * per_batch + j) % len(order)]]) if j < per_batch else
                      self.outlier_in_context(random.Random(f"{t.seed}-{self.state.epoch}-{k}-{j}-outlier"))
                      for j in picks]
            o = self._to(self.enc.pad_batch([self.enc.classify(text, earlier) for earlier, text in seen_o]))
            with self._autocast():
                logits_o = self.model.intent_logits(o["input_ids"], o["attention_mask"]).float()
            oe = -logits_o.log_softmax(-1).mean(-1).mean()
            # a sum over the items / `per_batch`: the items read in a conversation come on top, never dilute the others
            loss = loss + t.outlier_weight * oe * oe_weight * (per_batch + self.outliers_in_context) / per_batch
            shown["outlier_loss"] = f"{oe.item():.3f}"
        if self.reply_records and t.reply_weight > 0:
            order, n = _order(len(self.reply_records), t.seed, "reply", self.state.epoch), t.reply_batch_size
            every = [self.enc.reply(self.reply_view(self.reply_records[order[(k * n + j) % len(order)]]),
                                    self.spec.settings.max_reply_tokens) for j in range(n)]
            picks, reply_weight = distributed.share(range(n), [sum(x != -100 for x in labels[1:]) for _, labels in every])
            pairs = [every[j] for j in picks]
            rb = self._to(self.enc.pad_batch([p[0] for p in pairs], [p[1] for p in pairs]))
            with self._autocast():
                lm = self.model.lm_loss(**rb)  # transformers takes the loss in float32
            loss = loss + t.reply_weight * lm * reply_weight
            shown["reply_loss"] = f"{lm.item():.3f}"
        return loss, shown

    def _intent_loss(self, b: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, R-drop's symmetric KL) of an intent batch; with `training.rdrop` the batch goes through
        the model twice in one pass (two dropout masks), the cross-entropy is their mean, else KL is 0."""
        twice = 2 if self.training.rdrop > 0 else 1
        logits = self.model.intent_logits(b["input_ids"].repeat(twice, 1), b["attention_mask"].repeat(twice, 1)).float()
        ce = F.cross_entropy(logits, y.repeat(twice), label_smoothing=self.training.label_smoothing)
        if twice == 1:
            return ce, logits.new_zeros(())
        p, q = logits.log_softmax(-1).chunk(2)
        kl = 0.5 * (F.kl_div(p, q, log_target=True, reduction="batchmean")
                    + F.kl_div(q, p, log_target=True, reduction="batchmean"))
        return ce, kl

    @torch.no_grad()
    def validate(self) -> dict:
        if not self.val_records:
            return {}
        texts = [r.text for r in self.val_records]
        probs = predict_proba(self.model, self.enc, texts, contexts=self.contexts(self.val_records))
        y = torch.tensor([self.model.intents.index(r.intent) for r in self.val_records])
        return {"val_loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), y)),
                "val_accuracy": float((probs.argmax(1) == y).float().mean())}

    def _end_of_finetune_epoch(self) -> bool:
        """Record validation, keep the best weights; True when early stopping says stop."""
        with self._averaged():
            metrics = {"epoch": self.state.epoch + 1, "step": self.state.step, **self.validate()}
        self.state.history.append(metrics)
        digits = 4 if self.policy.publish_counts else 2  # DP: no exact ratio that would give away a count
        self.log("epoch {epoch}: ".format(**metrics) + ", ".join(f"{k} {v:.{digits}f}" for k, v in metrics.items()
                                                                  if k.startswith("val"))
                 + (f", ε spent {self.privacy.spent():.2f} of {self.spec.privacy.target_epsilon:g}" if self.privacy else ""))
        loss = metrics.get("val_loss", -self.state.epoch) if self.policy.use_validation else -self.state.epoch
        if not all(v.may_keep(self.state.epoch) for v in self.views):  # e.g. before adversarial training began
            return False
        if loss < self.state.best_val_loss - 1e-4:
            self.state.best_val_loss, self.state.best_epoch, self.state.bad_epochs = loss, self.state.epoch, 0
            if self.main:
                with self._averaged():
                    save_model(self.model, str(self.ckpt / "best.safetensors.tmp"))
                (self.ckpt / "best.safetensors.tmp").replace(self.ckpt / "best.safetensors")
        else:
            self.state.bad_epochs += 1
        return bool(self.val_records) and self.state.bad_epochs >= self.training.patience

    def run(self, resume: bool = False) -> Path:
        self._setup(resume)
        if self.state.stage == "done":
            self.log(f"{self.ckpt}: training had already finished; saving the model")
        started = time.time() - self.state.seconds
        self.model.train()
        if self.state.stage == "pretrain":
            texts = self.pretrain_texts()
            while self.state.epoch < self.training.pretrain_epochs:
                self._pretrain_epoch(texts)
                self.state.epoch, self.state.batch = self.state.epoch + 1, 0
                self.state.seconds = time.time() - started
                self.checkpoint()
            self.state.stage, self.state.epoch, self.state.batch = "finetune", 0, 0
            self.state.stage_start = self.state.step
            self._finetuned_model()
            self.opt = self._optimizer()
            self.checkpoint()
        elif self.state.stage == "finetune" and not self.state.history and not self.state.step:
            self._finetuned_model()  # a pretrained base starts here
            self.opt = self._optimizer()
        if self.state.stage == "finetune" and self.privacy:
            self.privacy.start(self)  # plans the noise, may release the prototypes, wraps the optimizer
        self._start_average()
        while self.state.stage == "finetune" and self.state.epoch < self.training.epochs:
            for v in self.views:
                v.start_epoch(self)
            if self.average and self.state.batch == 0 and self.state.epoch and self.views and (
                    all(v.may_keep(self.state.epoch) for v in self.views)
                    and not all(v.may_keep(self.state.epoch - 1) for v in self.views)):
                self.average = WeightAverage(self.model, self.training.weight_average)  # only weights that may be kept
            self._finetune_epoch()
            stop = distributed.from_main(self._end_of_finetune_epoch())  # every rank stops together
            self.state.epoch, self.state.batch = self.state.epoch + 1, 0
            self.state.seconds = time.time() - started
            if stop:
                self.log(f"early stopping: no validation improvement for {self.training.patience} epochs")
                break
            self.checkpoint()
        self.state.stage = "done"
        self.state.seconds = time.time() - started
        self.checkpoint()
        if self.main:
            if (self.ckpt / "best.safetensors").is_file():
                load_model(self.model, str(self.ckpt / "best.safetensors"), device=str(self.device))
            elif self.average:
                self.average.copy_to_model()
            self.model.eval()
            self._save_final()
        distributed.barrier()  # the other ranks end when the model is saved
        return self.out_dir

    def _calibrate(self) -> dict:
        """Fit the temperature on the validation split's logits (temperature scaling). Not when the validation
        split classifies perfectly: its likelihood then only ever grows as the temperature falls, and the fit
        would sharpen every probability toward 1 (undoing the fallback). Private training may not use the validation
        split: it keeps the temperature its `finish` fitted on public data, if any."""
        if self.privacy and self.privacy.calibration:
            self.log(f"calibration: temperature {self.model.temperature:.3f} ({self.privacy.calibration['fitted_on']})")
            return self.privacy.calibration
        self.model.temperature = 1.0
        if not (self.policy.use_validation and self.val_records):
            return {"temperature": 1.0, "fitted_on": None}
        y = torch.tensor([self.model.intents.index(r.intent) for r in self.val_records])
        logits = predict_logits(self.model, self.enc, [r.text for r in self.val_records],
                                contexts=self.contexts(self.val_records))
        if bool((logits.argmax(1) == y).all()):
            self.log("calibration: not fitted (every validation example is classified right); temperature 1")
            return {"temperature": 1.0, "fitted_on": None, "why": "every validation example was classified right"}
        self.model.temperature = fit_temperature(logits, y)
        self.log(f"calibration: temperature {self.model.temperature:.3f} (fitted on the validation split)")
        return {"temperature": round(self.model.temperature, 4), "fitted_on": "validation split"}

    def _neighbours(self) -> tuple[neighbours.Neighbours | None, dict]:
        """(index, card section) of the distance rule: the training examples' features as served (each read after
        its own earlier turns, as validation reads them) and, when the classifier reads earlier turns, as a served
        conversation reads them (`conversation_views`). The threshold is fitted on the validation split, read the
        same ways."""
        q = self.spec.settings.distance_quantile
        why = ("settings.distance_quantile is 0" if not q else None if self.policy.index_examples else
               "it would ship features of the training examples, which the privacy guarantee does not cover")
        if why is None and not self.val_records:
            why = "no validation split to fit its threshold on"
        if why:
            return None, {"enabled": False, "why": why}
        feats = []
        for recs in (self.train_records, self.val_records):
            pairs = [(c, r.text) for c, r in zip(self.contexts(recs), recs)] + self.conversation_views(recs)
            feats.append(predict_features(self.model, self.enc, [t for _, t in pairs], contexts=[c for c, _ in pairs]))
        index = neighbours.fit(*feats, quantile=q)
        self.log(f"distance rule: falls back beyond distance {index.threshold:.3f} to the {index.k} nearest of "
                 f"{len(feats[0])} training views ({q:g} of the {len(feats[1])} validation views lie within it)")
        return index, {"enabled": True, **index.describe(), "validation_views": len(feats[1]),
                       **({"conversation_views": True} if self.classify_context else {})}

    def conversation_views(self, recs: list[Record]) -> list[tuple[list[str], str]]:
        """(earlier user texts, message) pairs the distance rule also indexes when the classifier reads earlier
        turns: each single-turn record read after another intent's training example (a new request after an
        earlier one, as a served conversation reads it; seeded by the record's text). Else none. Generated
        follow-ups are not indexed: the ones the model reads poorly sit among the outliers, and indexing them
        cost 3 points of out-of-scope recall on the demo bot (BENCHMARKS.md, "The distance rule")."""
        if not self.classify_context:
            return []
        out, pool = [], self.train_records
        for r in recs:
            if r.context:
                continue
            rng = random.Random(f"{self.training.seed}-index-{r.text}")
            for _ in range(100):  # another intent's example (a bot has at least two intents)
                other = pool[rng.randrange(len(pool))]
                if other.intent != r.intent:
                    out.append(([other.text], r.text))
                    break
        return out

    def _context_card(self) -> dict:
        if not self.classify_context:
            return {"earlier_turns_read": 0}
        return {"earlier_turns_read": self.classify_context, "follow_up_share": FOLLOW_UP_SHARE,
                "switch_share": SWITCH_SHARE, "follow_ups": "templates in bot/followups.py",
                **({"outliers_in_context_per_batch": self.outliers_in_context,
                    "follow_ups_alone_share": FOLLOW_UP_ALONE} if self.outliers_in_context else {})}

    def _outlier_card(self, counts: bool) -> dict:
        if not self.outliers():
            return {"enabled": False}
        t = self.training
        return {"enabled": True, "weight": t.outlier_weight, "per_batch": self.outlier_batch,
                "corpus": t.outlier_corpus or "bundled: bot/demo/public_sgd_turns.txt (Schema-Guided Dialogue, CC BY-SA 4.0)",
                **({"texts": len(self.outliers()), "dropped_as_near_examples": self._outliers[1],
                    "bot_file_out_of_scope_examples": len(self.spec.out_of_scope)} if counts else {})}

    def _save_final(self) -> None:
        if self.privacy:
            self.privacy.finish(self.model)  # the plain GPT-2 layout again (LoRA merged)
        calibration = self._calibrate()  # sets the temperature the saved config carries
        index, distance_card = self._neighbours()
        with atomic_dir(self.out_dir) as tmp:
            self.model.save(tmp, self.tok)
            if index:
                index.save(tmp)
            counts = self.policy.publish_counts
            history = self.state.history if counts else [  # DP: no exact ratio that would give away a count
                {k: (round(v, 2) if k == "val_accuracy" else v) for k, v in h.items() if k != "val_loss"}
                for h in self.state.history]
            best = history[self.state.best_epoch] if history and self.state.best_epoch >= 0 else {}
            # What the served model reads: a DP model reads each message alone.
            spec = dataclasses.replace(self.spec, settings=dataclasses.replace(
                self.spec.settings, classify_context=self.classify_context))
            cards.write(tmp, spec, counts=counts, training={
                "base": self.spec.model.base, "device": str(self.device), "seed": self.training.seed,
                "processes": distributed.world(),
                "steps": self.state.step, "finetune_start_step": self.state.stage_start,
                "best_epoch": self.state.best_epoch + 1,
                "epochs_run": len(history), "history": history,
                "resumed_from_steps": self.state.resumed_from,
                "seconds": round(self.state.seconds, 1 if counts else -1),
                **({"train_examples": len(self.train_records), "validation_examples": len(self.val_records),
                    "reply_examples": len(self.reply_records)} if counts else {}),
                **({"views": [v.describe() for v in self.views]} if self.views else {}),
                "outlier_exposure": self._outlier_card(counts),
                "regularisation": {k: v for k, v in (("weight_average", self.training.weight_average),
                                                     ("label_smoothing", self.training.label_smoothing),
                                                     ("rdrop", self.training.rdrop)) if v},
                "precision": self.precision,
                "conversation": self._context_card(),
                "calibration": calibration,
                "distance_rule": distance_card,
                **{k: v for k, v in best.items() if k.startswith("val")},
            })
            if self.privacy and (section := self.privacy.card(self)):
                cards.update(tmp, privacy=section)


def train(spec: BotSpec, out_dir: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True, log=print, keep_checkpoints: bool = False, views: list[View] = (), read=None,
          extra_records: list[Record] = (), privacy=None) -> Path:
    """Train and save: privately (DP-SGD) when the bot file says `privacy.enabled`. `views` add views of the
    records (augmentation, adversarial examples), `read` is how the served bot reads a message and `privacy`
    replaces the default DP-SGD engine (see the module docstring)."""
    trainer = Trainer(spec, out_dir, device=device, progress=progress, log=log, views=views, read=read,
                      extra_records=extra_records, privacy=privacy)
    out = trainer.run(resume=resume)
    if not keep_checkpoints and trainer.main:
        shutil.rmtree(trainer.ckpt, ignore_errors=True)
    distributed.finish()
    return out


def refit_distance_rule(spec: BotSpec, model_dir: str | Path, read=None, log=print) -> dict:
    """Fit the distance rule (bot/neighbours.py) of a model trained from `spec` again, as training ends would, with
    `spec.settings.distance_quantile`: the index replaces the model's own and the card says so. Its weights are
    not touched. Refused for a model trained under DP (the rule is never fitted on private records)."""
    model_dir = Path(model_dir)
    card = models.read_card(model_dir)
    if cards.Privacy.of(card).dp:
        raise ValueError(f"{model_dir}: trained under DP; the distance rule is never fitted on private records")
    spec = dataclasses.replace(spec, privacy=dataclasses.replace(spec.privacy, enabled=False))  # no private step here
    trainer = Trainer(spec, model_dir.with_name(model_dir.name + ".refit"), progress=False, log=log, read=read)
    trainer.model, trainer.tok = models.load(model_dir)
    trainer.enc = Encoder(trainer.tok, spec.model.max_length)
    index, section = trainer._neighbours()
    (model_dir / neighbours.FILE).unlink(missing_ok=True)
    if index:
        index.save(model_dir)
    cards.update(model_dir, training={**card["training"], "distance_rule": section},
                 settings={**card.get("settings", {}), "distance_quantile": spec.settings.distance_quantile})
    return section
