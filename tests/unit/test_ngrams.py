"""The intent head's hashed character n-grams (bot/ngrams.py, bot/model.py): where a word's buckets go, that the
packed (training) and per-token (explanation) layouts give the same logits, that a saved model keeps them, that
explanations stay complete with them, and that DP's per-record clipping covers their layer (an oracle test, as
tests/unit/test_bookkeeping.py does per handler). Tiny untrained models only."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bot import ngrams
from bot.data import Encoder
from bot.model import DialogueModel, load
from bot.tokenizer import fit_bpe

CORPUS = ["please cancel my order", "where is my parcel", "cancel the subscription", "track my refund please",
          "hello there, my order 4432 never came", "I want a refund for <PERSON>'s order"] * 20
INTENTS = ["cancel_order", "track_order", "get_refund"]
BUCKETS = 512


@pytest.fixture(scope="module")
def tok():
    return fit_bpe(CORPUS, vocab_size=300)


def tiny_model(tok, buckets=BUCKETS, seed=0) -> DialogueModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0,
                     embd_pdrop=0, attn_pdrop=0, pad_token_id=tok.pad_token_id)
    model = DialogueModel(GPT2LMHeadModel(cfg), INTENTS, tok, buckets).eval()
    with torch.no_grad():
        model.ngrams.weight.normal_(0, 0.5)  # as if trained (it starts at zero)
        model.ngrams.weight[0] = 3.0  # padding: masked out, so this must change nothing
    return model


def test_a_typo_changes_a_few_of_a_words_buckets_and_the_hash_is_the_same_in_any_case():
    right, typo = set(ngrams.word_buckets("cancel", 1 << 15)), set(ngrams.word_buckets("cancle", 1 << 15))
    assert ngrams.word_buckets("Cancel", 1 << 15) == ngrams.word_buckets("cancel", 1 << 15)
    assert len(right & typo) >= 4 and right != typo
    assert all(1 <= b < 1 << 15 for b in right | typo)  # 0 is padding
    assert len(ngrams.word_buckets("internationalisation", 1 << 15)) == ngrams.PER_WORD


def test_each_words_buckets_sit_on_its_first_token_and_only_on_the_message(tok):
    enc = Encoder(tok, 64)
    model = tiny_model(tok)
    row = enc.classify("hello there, my order 4432 never came", ["where is my parcel"])  # after an earlier turn
    ids = torch.tensor([row])
    per_token = model.bucket_ids(ids, torch.ones_like(ids), per_token=True)[0]
    has = [bool(b.any()) for b in per_token]
    strings = [tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(row)]
    message = max(k for k, t in enumerate(row) if t == enc.user) + 1
    assert not any(has[:message]) and not has[-1]  # neither the earlier turn nor the role tokens
    words = {w: ngrams.word_buckets(w, BUCKETS) for w in ["hello", "there", "my", "order", "4432", "never", "came"]}
    got = [sorted(set(b[b != 0].tolist())) for b, h in zip(per_token, has) if h]
    assert got == [sorted(set(v)) for v in words.values()]
    assert not any(h for s, h in zip(strings, has) if s.strip() == ",")  # punctuation has none


def test_packed_and_per_token_layouts_and_the_joint_pass_give_the_same_logits(tok):
    enc = Encoder(tok, 64)
    model = tiny_model(tok)
    texts = ["please cancel my order", "where is my parcel, 4432?", "refund"]
    b = enc.pad_batch([enc.classify(t) for t in texts])
    ids, mask = b["input_ids"], b["attention_mask"]
    with torch.no_grad():
        packed = model.intent_logits(ids, mask)
        per_token = model.intent_logits(None, mask, model.lm.get_input_embeddings()(ids),
                                        model.bucket_ids(ids, mask, per_token=True), torch.ones(ids.shape))
        no_ngrams = model.score(model.intent_features(ids, mask))
    torch.testing.assert_close(packed, per_token)
    assert (packed - no_ngrams).abs().max() > 0.1  # the n-grams do count
    with torch.no_grad():
        model.ngrams.weight[0] = 0.0
        torch.testing.assert_close(model.intent_logits(ids, mask), packed)  # the padding row never counted
    # the training pass (`forward`, message + reply) reads the same n-grams at the intent position
    rows = [enc.classify(t) + tok.encode(" track_order<|bot|> sure") for t in texts]
    full = enc.pad_batch(rows)
    pos = mask.sum(1) - 1
    with torch.no_grad():
        joint, _ = model(full["input_ids"], full["attention_mask"],
                         (full["attention_mask"].cumsum(1) - 1).clamp(min=0), pos)
    torch.testing.assert_close(joint, packed, rtol=1e-5, atol=1e-5)


def test_a_saved_model_keeps_its_ngram_logits_and_a_model_without_them_loads_as_before(tok, tmp_path):
    enc = Encoder(tok, 64)
    for buckets in (BUCKETS, 0):
        model = tiny_model(tok, buckets) if buckets else DialogueModel(tiny_model(tok).lm, INTENTS, tok, 0)
        model.save(tmp_path / str(buckets), tok)
        again, tok2 = load(tmp_path / str(buckets))
        b = enc.pad_batch([enc.classify("cancel my order please")])
        with torch.no_grad():
            torch.testing.assert_close(again.intent_logits(b["input_ids"], b["attention_mask"]),
                                       model.intent_logits(b["input_ids"], b["attention_mask"]))
        assert (again.ngrams is None) == (buckets == 0)


def test_explanations_stay_complete_and_credit_the_word_whose_ngrams_decide(tok):
    from explain.attribution import IntentExplainer

    enc = Encoder(tok, 64)
    model = tiny_model(tok)
    with torch.no_grad():
        model.score.weight.zero_()  # GPT-2's features count for nothing: the n-grams alone decide
        model.ngrams.weight.zero_()
        for b in ngrams.word_buckets("parcel", BUCKETS):
            model.ngrams.weight[b, INTENTS.index("track_order")] += 1.0
    e = IntentExplainer(model, enc, n_steps=64).explain("where is my parcel now")
    assert e.predicted == "track_order"
    assert e.delta < 1e-4 and abs(e.attribution_sum - (e.confidence - e.baseline_probability)) < 1e-4
    top = max(e.words, key=lambda w: w.raw)
    assert top.word == "parcel" and top.raw > 0.1
    assert all(abs(w.raw) < 1e-6 for w in e.words if w.word != "parcel")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dp_clips_the_ngram_layer_per_record(tok, dtype):
    """BookKeeping's per-record norms and clipped sum over the intent head (score and n-grams; the GPT-2 body
    frozen) against plain autograd one record at a time (tests/unit/test_bookkeeping.py's oracle)."""
    from tests.unit.test_bookkeeping import B, _check

    enc = Encoder(tok, 64)
    model = tiny_model(tok).to(dtype)
    for p in model.lm.parameters():
        p.requires_grad_(False)
    texts = ["please cancel my order", "where is my parcel", "cancel cancel cancel the order", "refund",
             "track my refund please, order 4432"][:B]
    b = enc.pad_batch([enc.classify(t) for t in texts])
    buckets = model.bucket_ids(b["input_ids"], b["attention_mask"])
    assert (buckets[2] != 0).sum() > len(set(buckets[2].tolist()) - {0})  # a record repeats buckets
    y = torch.tensor([0, 1, 0, 2, 1][:B])

    def loss(m, ids, mask, buckets, y):
        logits = m.intent_logits(ids, mask, bucket_ids=buckets)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")

    _check(model, loss, (b["input_ids"], b["attention_mask"], buckets, y), dtype)
    assert (buckets == 0).any() and torch.all(model.ngrams.weight.grad[0] == 0)  # padding gets no gradient
