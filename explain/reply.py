"""Which words of the message shaped the reply: Captum's `LLMAttribution` with `FeatureAblation`.

Each word of the user's message is one feature; ablating it (dropping the word) and re-scoring
the same reply gives that word's effect on the reply's log-probability, in total and per reply token.
The prompt is the one the reply was generated from (intent included), without earlier turns.
"""
from __future__ import annotations

import torch
from captum.attr import FeatureAblation, LLMAttribution, TextTemplateInput

from bot.tokenizer import BOT, INTENT, USER
from explain.words import normalise, segment


def _plain(s: str) -> str:
    """User text can never spell a role token (`<|bot|>`...) in the prompt Captum tokenises."""
    return s.replace("<|", "< |")


def reply_prompt(text: str, spans: list[tuple[int, int]], values, intent: str) -> str:
    """The reply prompt with each word span of `text` replaced by its value (an ablated word is "")."""
    out, last = [], 0
    for (start, end), value in zip(spans, values):
        out += [text[last:start], value]
        last = end
    out.append(text[last:])
    return f"{USER} {_plain(''.join(out))}{INTENT} {intent}{BOT}"  # joined first: "<", "|", "bot"... spell one too


def explain_reply(model, enc, text: str, intent: str, reply: str, max_reply_tokens: int = 48) -> dict:
    seg = segment(enc.tok, text, enc.max_length - 2)
    words, spans = seg.words, seg.spans

    def template(*values: str) -> str:
        return reply_prompt(text, spans, values, intent)

    target = torch.tensor(enc.words(reply)[:max_reply_tokens])
    model.eval()
    llm = LLMAttribution(FeatureAblation(model.lm), enc.tok)
    result = llm.attribute(TextTemplateInput(template, values=list(words)), target=target)
    seq = result.seq_attr.detach().cpu().tolist()
    return {
        "method": "LLMAttribution(FeatureAblation): drop one word, re-score the reply's log-probability",
        "words": [{"word": w, "score": s, "raw": r} for w, s, r in zip(words, normalise(seq), seq)],
        "reply_tokens": list(result.output_tokens),
        "token_attr": result.token_attr.detach().cpu().tolist() if result.token_attr is not None else None,
    }
