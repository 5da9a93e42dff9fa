"""DP-SGD for the whole bot (intent head and reply model) with Opacus.

One record = one training utterance. Each step, Poisson sampling picks records; each record gives
ONE sequence `<|user|> view-of-text<|intent|> name<|bot|> reply`, whose intent loss and reply loss
make one per-record gradient, clipped (ghost clipping) before Gaussian noise is added. Views
(`Trainer.view`: word dropout/insertion, TextAttack augmentation, adversarial examples) replace a
record's text for a step, never add records, and are made from that record alone plus public
resources (inserted words come only from the tokenizer's public + authored text, synonyms from
WordNet, adversarial examples from attacking that record against the current, already private, model).
Dialogue records (the same turns with context) are left out under DP.

The offline default never fits its tokenizer or pre-trains on the private utterances: both use a
public corpus (the bundled BANKING77 training text unless `privacy.public_corpus` names another)
plus the bot's own authored responses and intent names. Validation is reported, never used to
pick weights: the last epoch is kept.
"""
from __future__ import annotations

import csv
import functools
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from bot.data import Record
from bot.train import Trainer, _lr
from safety.gpt2_dp import add_lora, conv1d_to_linear, linear_to_conv1d, merge_lora, position_ids, train_top, untie

ACCOUNTANT = "prv"
BUNDLED_PUBLIC = Path(__file__).resolve().parents[1] / "bot" / "demo" / "public_banking77.txt"


def default_delta(n_records: int) -> float:
    """Below 1/N: 1/(10·N), rounded down to one significant digit."""
    x = 1.0 / (10 * n_records)
    return float(f"{x:.0e}") if float(f"{x:.0e}") <= x else float(f"{x:.0e}") / 2


def read_public_corpus(path: str | Path) -> list[str]:
    """Lines of a .txt, the text column of a CSV, or every example of a bot YAML."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        from bot.data import corpus
        from bot.spec import load_bot
        return corpus(load_bot(path)[0])
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        col = next((c for c in ("text", "utterance", "instruction") if rows and c in rows[0]), None)
        if col is None:
            raise ValueError(f"{path}: a public CSV corpus needs a 'text' column")
        return [r[col].strip() for r in rows if r[col].strip()]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def epsilon_for(history: list, delta: float) -> float:
    """ε from Opacus' PRV accountant for a history of (noise_multiplier, sample_rate, steps)."""
    acc = PRVAccountant()
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta))


class DPTrainer(Trainer):
    def __init__(self, spec, out_dir, **kw):
        super().__init__(spec, out_dir, **kw)
        self.p = spec.privacy
        self.n = len(self.train_records)
        self.delta = self.p.delta or default_delta(self.n)
        if self.delta >= 1 / self.n:
            raise ValueError(f"privacy.delta {self.delta} must be below 1/N = {1 / self.n:.2e}")
        self.public_path = Path(self.p.public_corpus) if self.p.public_corpus else BUNDLED_PUBLIC

    # ---------------------------------------------------------------- what may see private data
    @functools.cached_property
    def _public(self) -> list[str]:
        return read_public_corpus(self.public_path)

    def _authored(self) -> list[str]:
        return ([r for i in self.spec.intents.values() for r in i.responses] + list(self.spec.intents)
                + [self.spec.fallback])

    def tokenizer_corpus(self) -> list[str]:
        return self._public + self._authored()

    def pretrain_texts(self) -> list[str]:
        return self._public

    def keep_best(self) -> bool:
        return False

    def prepare_model(self) -> None:
        conv1d_to_linear(self.model.lm)
        untie(self.model.lm)
        if self.p.lora_rank > 0:  # adapters everywhere + intent head and final norm; LM head frozen
            add_lora(self.model.to(self.device), self.p.lora_rank)
            self.trainable = train_top(self.model, 0, lm_head=False, freeze_rest=False)
        else:
            self.trainable = train_top(self.model, self.p.train_blocks, lm_head=self.t.reply_weight > 0)

    # ---------------------------------------------------------------- Opacus
    def start_finetune(self) -> None:
        self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        loader = DataLoader(TensorDataset(torch.arange(self.n)), batch_size=self.p.logical_batch)
        ledger = self.state.extra.get("privacy")
        common = dict(module=self.model, optimizer=self.opt, data_loader=loader, criterion=torch.nn.CrossEntropyLoss(),
                      max_grad_norm=self.p.max_grad_norm, poisson_sampling=True, grad_sample_mode="ghost")
        if ledger:  # resuming: same noise as planned, and the accountant continues its history
            self.dp_model, self.opt, _, self.loader = self.engine.make_private(
                noise_multiplier=ledger["noise_multiplier"], **common)
            self.engine.accountant.history = [tuple(h) for h in ledger["history"]]
        else:
            self.dp_model, self.opt, _, self.loader = self.engine.make_private_with_epsilon(
                target_epsilon=self.p.target_epsilon, target_delta=self.delta, epochs=self.t.epochs, **common)
        self.sample_rate = 1 / len(self.loader)
        self._update_ledger()
        self.log(f"DP-SGD: noise multiplier {self.opt.noise_multiplier:.3f}, sample rate {self.sample_rate:.4f}, "
                 f"clip {self.p.max_grad_norm}, target ε {self.p.target_epsilon} at δ {self.delta:.1e} "
                 f"over {self.t.epochs} epochs of {self.n} records")

    def _update_ledger(self) -> None:
        history = [list(h) for h in self.engine.accountant.history]
        self.state.extra["privacy"] = {
            "noise_multiplier": self.opt.noise_multiplier, "sample_rate": self.sample_rate, "history": history,
            "epsilon": epsilon_for(history, self.delta) if history else 0.0,
        }

    def _checkpoint(self) -> None:
        if hasattr(self, "engine"):
            self._update_ledger()
        super()._checkpoint()

    def _optimizer_to_save(self):
        return getattr(self.opt, "original_optimizer", self.opt)

    def _batch(self, idx: list[int]):
        """One sequence per sampled record: a view of its text, its intent position and reply labels."""
        intent_id = {n: i for i, n in enumerate(self.model.intents)}
        rng = random.Random(f"{self.t.seed}-dp-{self.state.step}")
        seqs, labels, pos, ys = [], [], [], []
        for i in idx:
            r = self.train_records[i]
            text = self.view(i, r, rng)
            prefix = self.enc.classify(text)
            if r.reply and self.t.reply_weight > 0:
                ids, lab = self.enc.reply(Record(text, r.intent, r.reply), self.spec.settings.max_reply_tokens)
            else:
                ids, lab = prefix, [-100] * len(prefix)
            seqs.append(ids), labels.append(lab), pos.append(len(prefix) - 1), ys.append(intent_id[r.intent])
        b = self.enc.pad_batch(seqs, labels)
        b = {k: v.to(self.device) for k, v in b.items()}
        return b, torch.tensor(pos, device=self.device), torch.tensor(ys, device=self.device)

    def per_record_loss(self, b, pos, y) -> torch.Tensor:
        """Intent CE + reply_weight × mean reply-token CE, one value per record."""
        intent_logits, lm_logits = self.dp_model(b["input_ids"], b["attention_mask"], position_ids(b["attention_mask"]), pos)
        loss = F.cross_entropy(intent_logits, y, reduction="none")
        labels = b["labels"][:, 1:]
        tok = F.cross_entropy(lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]), labels.reshape(-1),
                              reduction="none", ignore_index=-100).view(labels.shape)
        n_tok = (labels != -100).sum(1)
        reply = tok.sum(1) / n_tok.clamp_min(1)
        return loss + self.t.reply_weight * reply

    def _finetune_epoch(self) -> None:
        steps_per_epoch = len(self.loader)
        total = steps_per_epoch * self.t.epochs
        bar = tqdm(total=steps_per_epoch, initial=self.state.batch, disable=not self.progress,
                   desc=f"DP fine-tune {self.state.epoch + 1}/{self.t.epochs}")
        with BatchMemoryManager(data_loader=self.loader, max_physical_batch_size=self.p.physical_batch,
                                optimizer=self.opt) as loader:
            for (idx,) in loader:
                for g in self.opt.param_groups:
                    g["lr"] = _lr(self.state.step - self.state.stage_start, total, self.t.learning_rate)
                if len(idx):
                    b, pos, y = self._batch(idx.tolist())
                    per_record = self.per_record_loss(b, pos, y)
                    DPTensorFastGradientClipping(self.dp_model, self.opt, per_record, "mean").backward()
                    last = per_record.mean().item()
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
        merge_lora(self.model.lm)
        linear_to_conv1d(self.model.lm)
        super()._save_final()

    def card_sections(self) -> dict:
        ledger = self.state.extra.get("privacy", {})
        if "history" not in ledger:
            return {}
        epsilon = epsilon_for(ledger["history"], self.delta)
        steps = sum(h[2] for h in ledger["history"])
        return {"privacy": {
            "dp": True, "epsilon": epsilon, "delta": self.delta, "target_epsilon": self.p.target_epsilon,
            "accountant": "Opacus PRV (Poisson-subsampled Gaussian)", "noise_multiplier": ledger["noise_multiplier"],
            "sample_rate": ledger["sample_rate"], "max_grad_norm": self.p.max_grad_norm, "steps": steps,
            "epochs": self.t.epochs, "logical_batch": self.p.logical_batch, "physical_batch": self.p.physical_batch,
            "records": self.n, "unit": "one training utterance (its text and its reply target)",
            "clipping": "per record, flat, ghost clipping", "lm_head": "untied from the input embeddings",
            "trained": (f"LoRA adapters of rank {self.p.lora_rank} on every attention and MLP projection "
                        "(merged into the saved weights), final norm and intent head; the rest is frozen at its "
                        "public pre-training" if self.p.lora_rank > 0 else
                        "all parameters" if self.p.train_blocks < 0 else
                        f"top {self.p.train_blocks} transformer block(s), final norm and heads; the rest is "
                        "frozen at its public pre-training"),
            "covers": f"the {self.n} training utterances of bot '{self.spec.name}' (intent head and reply model)",
            "public_data": (f"tokenizer and LM pre-training: {self.public_path.name} (public) plus the bot's own "
                            "responses and intent names" if self.spec.model.base == "scratch"
                            else f"pretrained base {self.spec.model.base}"),
            "not_covered": "validation and test utterances (held out, used only for reported metrics); "
                           "multi-turn dialogues (not used under DP)",
            "history": ledger["history"],
        }}


def report(model_dir: str | Path) -> str:
    """The model's privacy guarantee in plain words, from its card."""
    from bot.model import read_card

    card = read_card(model_dir)
    if not card:
        raise FileNotFoundError(f"{model_dir}: no candor.json here; is this a Candor model directory?")
    p = card.get("privacy")
    name = card.get("bot", {}).get("name", model_dir)
    if not p or not p.get("dp"):
        return (f"{name}: trained WITHOUT differential privacy. No privacy guarantee: the model may have "
                "memorised its training utterances. Retrain with `candor train --dp` for one.")
    return "\n".join([
        f"{name}: trained with differential privacy (DP-SGD, Opacus).",
        f"Guarantee: (ε = {p['epsilon']:.2f}, δ = {p['delta']:.2g})-differential privacy for each training record "
        f"({p['unit']}).",
        f"In plain words: adding or removing any one of the {p['records']} training utterances changes the "
        f"probability of getting this model by at most a factor of e^{p['epsilon']:.2f} ≈ {math.exp(p['epsilon']):.1f}, "
        f"except with probability {p['delta']:.2g}.",
        f"Covers: {p['covers']}.",
        f"Public data (no guarantee needed): {p['public_data']}.",
        f"Not covered: {p['not_covered']}.",
        *([f"Trained privately: {p['trained']}."] if p.get("trained") else []),
        f"How: {p['accountant']} accountant; noise multiplier {p['noise_multiplier']:.3f}, sample rate "
        f"{p['sample_rate']:.4f}, clipping norm {p['max_grad_norm']}, {p['steps']} steps over {p['epochs']} epochs "
        f"({p['clipping']}; LM head {p['lm_head']}).",
        "A record that repeats (the same person writing several utterances) is protected only "
        "group-wise: k such records get at most k·ε.",
    ])
