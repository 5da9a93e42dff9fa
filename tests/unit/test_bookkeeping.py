"""Oracle tests for each of BookKeeping's per-layer handlers (safety/bookkeeping.py), as Opacus tests its per-sample
gradient samplers one layer at a time: a tiny module holding just that layer, a per-record loss, a batch of several
records (sequences, padding, repeated tokens where the handler meets them), and the oracle is plain autograd run one
record at a time. Checked: (a) the per-record gradient norms BookKeeping computes, (b) the gradient it leaves in
`p.grad`: the sum over records of each record's gradient times its clipping factor, for a bound C that clips some
records and not others. Float64 (tolerances near machine precision) and float32 (tight float32 tolerances).
Public API only: `BookKeeping(model, C)`, `.recording()`, `.backward(per_record_losses)`, `.norms`, `.close()`.
No GPT-2, no training: the whole file runs in a few seconds."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from safety.bookkeeping import BookKeeping

B = 5  # records per batch
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-11}, torch.float32: {"rtol": 2e-5, "atol": 1e-6}}


def _records(*shape, dtype, gen) -> torch.Tensor:
    """Random inputs of shape (B, *shape), record i scaled by a different factor so the records' norms spread out."""
    x = torch.randn(B, *shape, dtype=dtype, generator=gen)
    return x * torch.linspace(0.3, 2.5, B, dtype=dtype).view(B, *[1] * len(shape))


def _padding(t: int, dtype) -> torch.Tensor:
    """(B, t) mask of real tokens: records of different lengths, right-padded (the first one unpadded)."""
    lengths = [t, t - 1, 1, t - 2, 2][:B]
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).to(dtype)


def _squared_error(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One loss per record: half the squared error over its (real) positions."""
    err = 0.5 * (out - target) ** 2
    if mask is not None:  # padded positions do not count
        err = err * mask.view(*mask.shape, *[1] * (err.dim() - mask.dim()))
    return err.flatten(1).sum(1)


def _check(model: nn.Module, loss_fn, inputs: tuple, dtype) -> None:
    """`loss_fn(model, *inputs)` gives one loss per record; every input's first axis is the record."""
    params = [p for p in model.parameters() if p.requires_grad]
    # the oracle: each record alone (a batch of one), plain autograd
    per_record = []
    for i in range(B):
        loss = loss_fn(model, *[x[i:i + 1] if torch.is_tensor(x) else x for x in inputs])
        assert loss.shape == (1,)
        grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
        per_record.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in gs)) for gs in per_record])
    ordered = norms.sort().values
    clip = float(ordered[1] + ordered[2]) / 2  # records 0 and 1 (by norm) kept whole, the other three clipped
    assert (norms < clip).sum() == 2 and (norms > clip).sum() == B - 2
    # Opacus' clipping factor: min(1, C / (norm + 1e-6)) (the 1e-6 keeps a zero-norm record finite)
    factor = [min(1.0, clip / (float(n) + 1e-6)) for n in norms]
    expected = [sum(factor[i] * per_record[i][k] for i in range(B)) for k in range(len(params))]

    for p in model.parameters():  # stale gradients are replaced, never added to
        p.grad = torch.full_like(p, 7.0) if p.requires_grad else None
    bk = BookKeeping(model, clip)
    try:
        with bk.recording():
            losses = loss_fn(model, *inputs)
        assert losses.shape == (B,)
        bk.backward(losses)
    finally:
        bk.close()
    torch.testing.assert_close(bk.norms, norms, **TOL[dtype])
    for k, (p, e) in enumerate(zip(params, expected)):
        assert p.grad is not None and p.grad.dtype == p.dtype
        torch.testing.assert_close(p.grad, e, **TOL[dtype], msg=lambda m, k=k: f"parameter {k}: {m}")
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


DTYPES = [torch.float64, torch.float32]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ nn.Linear
# The handler has three ways to the norm and the clipped sum: ghost norm (tokens T with T^2 <= out*in) scaling the
# input when out >= in, scaling the output gradient when out < in, and explicit per-record gradients when
# T^2 > out*in. Each is hit below (the comments give the sizes).
LINEAR_CASES = {
    "one vector per record (T=1, ghost, out >= in)": (4, 6, ()),
    "sequence, ghost, out >= in (9 <= 24)": (4, 6, (3,)),
    "sequence, ghost, out < in (9 <= 24)": (6, 4, (3,)),
    "sequence, per-record gradients (49 > 6)": (2, 3, (7,)),
    "two token axes (T=2*3, ghost: 36 <= 40)": (5, 8, (2, 3)),
    "two token axes (T=3*3, per-record: 81 > 12)": (3, 4, (3, 3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear(case, bias, dtype):
    d_in, d_out, tokens = LINEAR_CASES[case]
    torch.manual_seed(0)
    layer = nn.Linear(d_in, d_out, bias=bias).to(dtype)
    g = _gen()
    x, target = _records(*tokens, d_in, dtype=dtype, gen=g), _records(*tokens, d_out, dtype=dtype, gen=g)
    _check(layer, lambda m, x, t: _squared_error(m(x), t, None), (x, target), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d_in,d_out,t", [(4, 6, 4), (6, 4, 4), (2, 3, 6)])  # ghost (both ways), per-record
def test_linear_on_padded_sequences(d_in, d_out, t, dtype):
    """Padded positions hold garbage input; the loss ignores them, so they must add nothing to a record's norm."""
    torch.manual_seed(1)
    layer = nn.Linear(d_in, d_out).to(dtype)
    g = _gen(1)
    x, target, mask = _records(t, d_in, dtype=dtype, gen=g), _records(t, d_out, dtype=dtype, gen=g), _padding(t, dtype)
    _check(layer, lambda m, x, t, k: _squared_error(m(x), t, k), (x, target, mask), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_with_a_frozen_weight_and_a_trainable_bias(dtype):
    torch.manual_seed(2)
    layer = nn.Linear(3, 4).to(dtype)
    layer.weight.requires_grad_(False)
    g = _gen(2)
    x, target = _records(5, 3, dtype=dtype, gen=g), _records(5, 4, dtype=dtype, gen=g)
    _check(layer, lambda m, x, t: _squared_error(torch.tanh(m(x)), t, None), (x, target), dtype)


# ------------------------------------------------------------------------------------------------ LoRA
class LoraLinear(nn.Module):
    """The pieces peft's LoRA puts on a projection (peft.tuners.lora.Linear, no dropout): a frozen base layer plus
    `lora_B(lora_A(x)) * scaling`, where lora_A and lora_B are bias-free nn.Linear layers, the only trainable ones."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float):
        super().__init__()
        self.base_layer = nn.Linear(d_in, d_out)
        self.base_layer.requires_grad_(False)
        self.lora_A, self.lora_B = nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.5)  # peft starts it at zero: any gradient of lora_A would be 0
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank,t", [(2, 4), (4, 3), (1, 5)])
def test_lora_adapters_on_a_frozen_projection(rank, t, dtype):
    """Two stacked adapted projections (as in a GPT-2 block: c_attn then c_proj) over padded sequences; only the
    adapters train. lora_A's weight is (rank, 8), lora_B's (8, rank): rank 2 with T=4 and rank 4 with T=3 take the
    ghost norm (T^2 <= 8 * rank), rank 1 with T=5 the per-record gradients (25 > 8)."""
    torch.manual_seed(3)
    model = nn.Sequential(LoraLinear(8, 8, rank, alpha=2 * rank), nn.GELU(), LoraLinear(8, 8, rank, alpha=2 * rank))
    model.to(dtype)
    assert sum(p.requires_grad for p in model.parameters()) == 4  # the four adapter weights
    g = _gen(3)
    x, target, mask = _records(t, 8, dtype=dtype, gen=g), _records(t, 8, dtype=dtype, gen=g), _padding(t, dtype)
    _check(model, lambda m, x, t, k: _squared_error(m(x), t, k), (x, target, mask), dtype)


# ------------------------------------------------------------------------------------------------ nn.Embedding
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_with_repeated_tokens(padding_idx, dtype):
    """A token repeated in a record adds its rows up in that record's gradient (the same-token mask); with
    `padding_idx`, the padding token's row never gets a gradient, although the loss here reads padded positions."""
    torch.manual_seed(4)
    emb = nn.Embedding(6, 3, padding_idx=padding_idx).to(dtype)
    g = _gen(4)
    ids = torch.randint(1, 6, (B, 9), generator=g)  # 9 tokens from 5: every record repeats some
    ids[:, 1] = ids[:, 0]  # and certainly its first token
    if padding_idx is not None:
        ids = ids * _padding(9, torch.long)  # right-padded with token 0
        assert (ids == 0).any()
    assert all(len(set(r.tolist())) < 9 for r in ids)
    target = _records(9, 3, dtype=dtype, gen=g)
    _check(emb, lambda m, ids, t: _squared_error(torch.tanh(m(ids)), t, None), (ids, target), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_of_one_token_per_record(dtype):
    torch.manual_seed(5)
    emb = nn.Embedding(4, 3).to(dtype)
    g = _gen(5)
    ids = torch.tensor([0, 1, 1, 3, 0])  # (B,): two records share a token, never within one record
    target = _records(3, dtype=dtype, gen=g)
    _check(emb, lambda m, ids, t: _squared_error(m(ids), t, None), (ids, target), dtype)


# ------------------------------------------------------------------------------------------------ nn.LayerNorm
LAYER_NORM_CASES = {
    "one vector per record": ((), 6),
    "sequence": ((4,), 6),
    "two token axes": ((2, 3), 5),
    "normalized over two axes": ((3,), (2, 4)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(LAYER_NORM_CASES))
def test_layer_norm(case, bias, dtype):
    tokens, shape = LAYER_NORM_CASES[case]
    shape = shape if isinstance(shape, tuple) else (shape,)
    torch.manual_seed(6)
    ln = nn.LayerNorm(shape, bias=bias).to(dtype)
    with torch.no_grad():  # away from the initial ones and zeros
        ln.weight.normal_(1.0, 0.5)
        if bias:
            ln.bias.normal_(0.0, 0.5)
    g = _gen(6)
    x = _records(*tokens, *shape, dtype=dtype, gen=g) * 3 + 1
    target = _records(*tokens, *shape, dtype=dtype, gen=g)
    _check(ln, lambda m, x, t: _squared_error(m(x), t, None), (x, target), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_on_padded_sequences(dtype):
    torch.manual_seed(7)
    ln = nn.LayerNorm(4).to(dtype)
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.5)
    g = _gen(7)
    x, target, mask = _records(5, 4, dtype=dtype, gen=g), _records(5, 4, dtype=dtype, gen=g), _padding(5, dtype)
    _check(ln, lambda m, x, t, k: _squared_error(m(x), t, k), (x, target, mask), dtype)


# ------------------------------------------------------------------------------------------------ all together
class TinyLM(nn.Module):
    """Embedding -> LayerNorm -> Linear -> LoRA-adapted projection -> head on the last real token, with a frozen
    layer in between and a trainable layer that runs but does not reach the loss: a record's norm is over every
    trainable parameter, and the unreached layer gets a zero gradient."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(7, 6, padding_idx=0)
        self.ln = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 10)
        self.frozen = nn.Linear(10, 6)
        self.frozen.requires_grad_(False)
        self.proj = LoraLinear(6, 6, rank=2, alpha=4)
        self.head = nn.Linear(6, 3)
        self.unused = nn.Linear(6, 2)

    def forward(self, ids, mask):
        h = self.proj(self.frozen(torch.tanh(self.fc(self.ln(self.wte(ids))))))
        self.unused(h)  # runs, reaches nothing
        last = mask.sum(1).long() - 1
        return self.head(h[torch.arange(ids.shape[0]), last])


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_small_model_of_every_handler(dtype):
    torch.manual_seed(8)
    model = TinyLM().to(dtype)
    g = _gen(8)
    mask = _padding(6, torch.long)
    ids = torch.randint(1, 7, (B, 6), generator=g) * mask
    labels = torch.tensor([0, 2, 1, 1, 0])

    def loss_fn(m, ids, mask, y):
        return nn.functional.cross_entropy(m(ids, mask), y, reduction="none")

    _check(model, loss_fn, (ids, mask, labels), dtype)
    assert torch.count_nonzero(model.unused.weight.grad) == 0 and torch.count_nonzero(model.unused.bias.grad) == 0
