"""The dialogue model: a causal LM (GPT-2 by default) with an intent head.

The intent head reads the hidden state of the last token of `<|user|> text<|intent|>`, exactly as
`GPT2ForSequenceClassification` pools, and is saved as `score.weight` beside the LM weights; to its logits it
adds those of the message's hashed character n-grams (bot/ngrams.py; `ngrams.weight`, one row per bucket;
`ngram_buckets` in config.json, 0 = none). So the saved directory loads with plain transformers both ways:
`AutoModelForCausalLM.from_pretrained(d)` (replies) and `AutoModelForSequenceClassification.from_pretrained(d)`
(intents from GPT-2's features alone: without the n-gram logits unless `ngram_buckets` is 0).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import logging as hf_logging
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from bot import ngrams
from bot import tokenizer as tokenizers
from bot.io import ModelFileError
from bot.spec import ModelSettings

CARD_JSON = "candor.json"


class DialogueModel(nn.Module):
    def __init__(self, lm: nn.Module, intents: list[str], tokenizer: PreTrainedTokenizerBase | None = None,
                 ngram_buckets: int = 0):
        """`ngram_buckets` > 0 adds the n-gram logits (bot/ngrams.py), read through `tokenizer`'s tokens."""
        super().__init__()
        self.lm = lm
        if getattr(lm, "loss_type", None) is None:
            lm.loss_type = "ForCausalLM"  # HF can't infer it from "GPT2LMHeadModel" and warns
        self.intents = list(intents)
        self.score = nn.Linear(lm.config.hidden_size, len(intents), bias=False)
        nn.init.normal_(self.score.weight, std=0.02)
        cfg = lm.config
        cfg.id2label = dict(enumerate(self.intents))
        cfg.label2id = {n: i for i, n in enumerate(self.intents)}
        cfg.ngram_buckets = ngram_buckets
        # n-gram logits per bucket, zero at the start (so adding them changes nothing until trained); bucket 0 is
        # padding, masked out of the logits (`ngram_logits`) so that no per-record gradient, Opacus' included,
        # ever reaches its row (nn.Embedding's padding_idx is not honoured by Opacus' per-sample gradients)
        self.ngrams = nn.Embedding(ngram_buckets, len(intents)) if ngram_buckets else None
        if self.ngrams is not None:
            nn.init.zeros_(self.ngrams.weight)
        self.words = ngrams.Buckets(tokenizer, ngram_buckets) if ngram_buckets else None
        self.user_id = tokenizer.convert_tokens_to_ids(tokenizers.USER) if ngram_buckets else None

    @property
    def device(self) -> torch.device:
        return self.score.weight.device

    def intent_features(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                        inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """What the intent head reads: the hidden state at each row's last real token (right padding)."""
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    inputs_embeds=inputs_embeds).last_hidden_state
        last = attention_mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def bucket_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, intent_pos: torch.Tensor | None = None,
                   per_token: bool = False) -> torch.Tensor | None:
        """The n-gram buckets of each row's message: the tokens after the last `<|user|>` before the row's
        `<|intent|>` (at `intent_pos`, else the last real token). (B, M) with the message's buckets packed, or with
        `per_token` (B, T, ngrams.PER_WORD) with each word's on its first token (for explanations); 0 = none. None
        for a model without n-grams."""
        if self.words is None:
            return None
        ends = (attention_mask.sum(1) - 1 if intent_pos is None else intent_pos).tolist()
        rows = []
        for row, end in zip(input_ids.tolist(), ends):
            start = max((k for k in range(end) if row[k] == self.user_id), default=-1) + 1
            rows.append([[]] * start + self.words.of(row, start, end))
        out = ngrams.batch(rows, input_ids.shape[1]) if per_token else ngrams.pack(rows)
        return out.to(input_ids.device)

    def ngram_logits(self, bucket_ids: torch.Tensor, word_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The n-gram part of the intent logits: the rows of the message's buckets summed, over the square root of
        their number (a long message does not outvote GPT-2 by length alone). `word_weights` (B, T), with per-token
        `bucket_ids`: each token's rows scaled (1 = as read; 0 = the explanation's baseline)."""
        real = bucket_ids != 0
        per_token = self.ngrams(bucket_ids) * real.unsqueeze(-1)  # (B, M, I) or (B, T, PER_WORD, I)
        if word_weights is not None:
            per_token = per_token.sum(2) * word_weights.unsqueeze(-1).to(per_token.dtype)
        n = real.flatten(1).sum(1, keepdim=True).clamp(min=1)
        return per_token.flatten(1, -2).sum(1) / n.sqrt()

    def intent_logits(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                      inputs_embeds: torch.Tensor | None = None, bucket_ids: torch.Tensor | None = None,
                      word_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over intents; from token ids or, for explanations, from their input embeddings with the message's
        per-token `bucket_ids` and `word_weights` (`ngram_logits`)."""
        return self.intent_logits_and_features(input_ids, attention_mask, inputs_embeds, bucket_ids, word_weights)[0]

    def intent_logits_and_features(self, input_ids, attention_mask, inputs_embeds=None, bucket_ids=None,
                                   word_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(intent logits, the GPT-2 features the head read: `intent_features`) from one pass."""
        features = self.intent_features(input_ids, attention_mask, inputs_embeds)
        logits = self.score(features)
        if self.ngrams is not None:
            if bucket_ids is None:
                if input_ids is None:
                    raise ValueError("a model with n-grams reads input embeddings with the message's per-token "
                                     "bucket_ids (bucket_ids(input_ids, attention_mask, per_token=True))")
                bucket_ids = self.bucket_ids(input_ids, attention_mask)
            logits = logits + self.ngram_logits(bucket_ids, word_weights).to(logits.dtype)
        return logits, features

    @property
    def temperature(self) -> float:
        """Calibration temperature of the intent probabilities (fitted on validation after training; saved in
        config.json as `intent_temperature`; 1.0 = uncalibrated)."""
        return float(getattr(self.lm.config, "intent_temperature", 1.0) or 1.0)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.lm.config.intent_temperature = float(value)

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Intent logits to calibrated probabilities: softmax(logits / temperature)."""
        return (logits.float() / self.temperature).softmax(-1)

    def intent_probs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                     inputs_embeds: torch.Tensor | None = None, bucket_ids: torch.Tensor | None = None,
                     word_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probabilities over intents: what the bot decides with and what explanations explain."""
        return self.calibrated(self.intent_logits(input_ids, attention_mask, inputs_embeds, bucket_ids, word_weights))

    def forward(self, input_ids, attention_mask, position_ids, intent_pos):
        """Both heads from one pass over `<|user|> text<|intent|> name<|bot|> reply`: intent logits at
        `intent_pos` (causal attention: they equal `intent_logits` of the prefix) and LM logits."""
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = self.score(hidden[rows, intent_pos])
        if self.ngrams is not None:
            logits = logits + self.ngram_logits(self.bucket_ids(input_ids, attention_mask, intent_pos)).to(logits.dtype)
        return logits, self.lm.get_output_embeddings()(hidden)

    def lm_loss(self, input_ids, attention_mask, labels) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    def save(self, directory: str | Path, tokenizer: PreTrainedTokenizerBase) -> None:
        directory = Path(directory)
        self.lm.config.architectures = ["GPT2LMHeadModel" if isinstance(self.lm, GPT2LMHeadModel)
                                        else type(self.lm).__name__]
        state = {k: v.contiguous() for k, v in self.lm.state_dict().items()}
        state["score.weight"] = self.score.weight.detach().contiguous()
        if self.ngrams is not None:
            state["ngrams.weight"] = self.ngrams.weight.detach().contiguous()
        self.lm.save_pretrained(directory, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(directory)


def build(settings: ModelSettings, tokenizer: PreTrainedTokenizerBase, intents: list[str]) -> DialogueModel:
    """A fresh model: a GPT-2 config from scratch, or a pretrained causal LM from a hub id/directory."""
    if settings.base == "scratch":
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=settings.max_length, n_embd=settings.n_embd,
            n_layer=settings.n_layer, n_head=settings.n_head, resid_pdrop=settings.dropout,
            embd_pdrop=settings.dropout, attn_pdrop=settings.dropout,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            # GPT-2's tanh GELU as one PyTorch kernel: the same function as "gelu_new" (which is written out in
            # Python ops), faster to train on CPU (benchmarks/train_step.py)
            activation_function="gelu_pytorch_tanh",
        )
        lm = GPT2LMHeadModel(config)
    else:
        lm = _causal_lm(settings.base)
        lm.resize_token_embeddings(len(tokenizer))
        lm.config.pad_token_id = tokenizer.pad_token_id
    model = DialogueModel(lm, intents, tokenizer, settings.ngram_buckets)
    model.temperature = 1.0  # a base that was itself a Candor model brings its own: this model is not calibrated yet
    return model


def _causal_lm(name_or_dir: str | Path):
    """The LM of a hub id or a directory, from safetensors only (never a pickled checkpoint)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a Candor model's `score.weight` is not the LM's: no "unused weights" warning
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_dir, use_safetensors=True)
    finally:
        hf_logging.set_verbosity(verbosity)


def make_tokenizer(settings: ModelSettings, corpus: list[str]):
    if settings.base == "scratch":
        return tokenizers.fit_bpe(corpus, settings.vocab_size)
    return tokenizers.from_pretrained(settings.base)


def check_safetensors(path: str | Path) -> None:
    """Raise ModelFileError unless `path` is a complete safetensors file (a truncated or corrupted file,
    or a pickled PyTorch file under that name, is refused before anything reads it)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)  # offsets are checked against the file's length
        size = path.stat().st_size
        with open(path, "rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
            meta = json.loads(fh.read(header))
        end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        if 8 + header + end != size:
            raise ValueError(f"{size} bytes, expected {8 + header + end}")
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise ModelFileError(f"{path}: not a complete safetensors file ({e}); it may be truncated, corrupted or "
                             "in another format (pickled PyTorch files are never loaded). Retrain, or restore it "
                             "from a backup.") from None


def load(directory: str | Path, device: str | torch.device = "cpu"):
    """Load a saved Candor model directory (safetensors only: pickles are never loaded)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"{directory}: no model.safetensors here; train one with `candor train`")
    check_safetensors(directory / "model.safetensors")
    tok = AutoTokenizer.from_pretrained(directory)
    lm = _causal_lm(directory)
    intents = [lm.config.id2label[i] for i in range(len(lm.config.id2label))]
    model = DialogueModel(lm, intents, tok, int(getattr(lm.config, "ngram_buckets", 0) or 0))
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        model.score.weight.data.copy_(f.get_tensor("score.weight"))
        if model.ngrams is not None:
            model.ngrams.weight.data.copy_(f.get_tensor("ngrams.weight"))
    return model.to(device).eval(), tok


def read_card(directory: str | Path) -> dict:
    path = Path(directory) / CARD_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def model_version(directory: str | Path, card: dict | None = None) -> str:
    """`<bot name>@<first 12 hex of the weights' SHA-256>`: which exact weights made a decision."""
    card = read_card(directory) if card is None else card
    h = hashlib.sha256()
    with open(Path(directory) / "model.safetensors", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{card.get('bot', {}).get('name', 'bot')}@{h.hexdigest()[:12]}"
