"""Tokenizers: a byte-level BPE fitted on the bot's own text, or a pretrained one plus Candor's tokens."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

EOS, PAD, USER, BOT, INTENT = "<|endoftext|>", "<|pad|>", "<|user|>", "<|bot|>", "<|intent|>"
ROLE_TOKENS = [USER, BOT, INTENT]


def fit_bpe(texts: Iterable[str], vocab_size: int = 4096) -> GPT2TokenizerFast:
    """A GPT-2 style byte-level BPE fitted on `texts` (the offline default)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS, PAD, *ROLE_TOKENS], show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                            unk_token=EOS, pad_token=PAD, additional_special_tokens=ROLE_TOKENS)
    tok.model_max_length = 1024
    return tok


def from_pretrained(name_or_dir: str) -> PreTrainedTokenizerFast:
    """A hub or local tokenizer with Candor's role tokens and a pad token added (GPT-2 has none)."""
    tok = AutoTokenizer.from_pretrained(name_or_dir)
    tok.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    return tok
