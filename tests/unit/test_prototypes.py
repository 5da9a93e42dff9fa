"""The DP prototype release with n-grams (safety/prototypes.py): one record moves the joint sums (GPT-2 part and
n-gram part) by a vector of length exactly 1, the n-gram rows it makes score a message as the model's
`ngram_logits` read it (LOGIT_SCALE × cosine), and the denoised rows do not rank intents by their noise. Tiny
untrained models only."""
from __future__ import annotations

import pytest
import torch

from bot.data import Encoder
from bot.tokenizer import fit_bpe
from safety.prototypes import LOGIT_SCALE, bucket_units, denoised, ngram_sums, prototype_head
from tests.unit.test_ngrams import CORPUS, tiny_model

TEXTS = ["please cancel my order", "cancel the subscription", "where is my parcel", "track my refund please",
         "I want a refund for my order", "cancel it now"]
LABELS = [0, 0, 1, 2, 2, 0]


@pytest.fixture(scope="module")
def tok():
    return fit_bpe(CORPUS, vocab_size=300)


def test_one_record_moves_the_joint_sums_by_a_unit_vector(tok):
    model, enc = tiny_model(tok), Encoder(tok, 64)
    buckets = bucket_units(model, enc, TEXTS)
    assert all(len(b) and (b != 0).all() for b in buckets)
    assert any(len(b.unique()) < len(b) for b in buckets)  # 512 buckets: some repeat, and the sums still hold
    share = 0.3
    y = torch.tensor(LABELS)
    full = ngram_sums(buckets, y, 3, model.ngrams.num_embeddings, share ** 0.5)
    for i in range(len(TEXTS)):
        keep = [k for k in range(len(TEXTS)) if k != i]
        diff = full - ngram_sums([buckets[k] for k in keep], y[keep], 3, model.ngrams.num_embeddings, share ** 0.5)
        # the n-gram part has length √share; the GPT-2 part (unit_vectors × √(1 − share)) the rest: 1 in all
        assert diff.norm().item() == pytest.approx(share ** 0.5, abs=1e-9)
        assert diff[LABELS[i]].norm().item() == pytest.approx(share ** 0.5, abs=1e-9)


def test_the_released_ngram_rows_score_a_message_as_the_model_reads_it(tok):
    """Without noise and with all the share on n-grams: the model's logits are LOGIT_SCALE × the cosine between a
    message's bucket vector and each intent's mean bucket vector, and the head's GPT-2 rows are 0."""
    model, enc = tiny_model(tok), Encoder(tok, 64)
    head, grams = prototype_head(model, enc, TEXTS, LABELS, CORPUS[:20], 0.0, None, ngram_share=1.0)
    assert torch.equal(head, torch.zeros_like(head)) and grams.shape == model.ngrams.weight.shape
    assert (grams[0] == 0).all()  # the padding bucket
    with torch.no_grad():
        model.score.weight.zero_()
        model.ngrams.weight.copy_(grams)
    message = "cancel my parcel order please"
    b = enc.pad_batch([enc.classify(message)])
    logits = model.intent_logits(b["input_ids"], b["attention_mask"])[0]
    def unit(row):  # bucket counts over their length
        x = torch.zeros(model.ngrams.num_embeddings, dtype=torch.float64).index_add_(
            0, row, torch.ones(len(row), dtype=torch.float64))
        return x / x.norm()

    (row,) = bucket_units(model, enc, [message])
    vectors = torch.zeros(3, model.ngrams.num_embeddings, dtype=torch.float64)
    for row_k, c in zip(bucket_units(model, enc, TEXTS), LABELS):
        vectors[c] += unit(row_k)
    cosines = torch.nn.functional.normalize(vectors, dim=1) @ unit(row)
    counts = row.unique(return_counts=True)[1].double()
    read_as = counts.norm() / counts.sum().sqrt()  # the model's Σ c·row / √Σc against the unit vector's
    assert torch.allclose(logits.double(), LOGIT_SCALE * read_as * cosines, atol=1e-5)


def test_denoised_rows_remove_the_noise_power_and_floor_a_noise_only_row():
    torch.manual_seed(0)
    d, sigma = 4096, 1.0
    signal = torch.zeros(3, d)
    signal[0, :50], signal[1, 50:60] = 4.0, 4.0  # strong, weak; row 2 has no signal at all
    noisy = signal + sigma * torch.randn(3, d)
    rows = denoised(noisy, sigma)
    # a row's length is ‖noisy‖ / √(‖noisy‖² − σ²d): near 1 + noise/signal for the strong row, where plain
    # normalising would shrink it to ‖signal‖ / ‖noisy‖ (0.44 here)
    assert 0.9 < float(rows[0, :50].mean() / (4.0 / signal[0].norm())) < 1.1
    # the noise-only row is floored (2σ²√(2d)), not divided by a near-zero estimate
    assert rows[2].norm() < 2 * (d ** 0.5) / (2 * (2 * d) ** 0.5) ** 0.5
    assert torch.allclose(denoised(signal, 0.0)[0], signal[0] / signal[0].norm())
