"""Per-record clipped gradients in ONE backward pass: book-keeping ghost clipping (Bu et al., 2023).

Opacus' ghost clipping runs two backward passes: the first finds each record's gradient norm (from
the layers' activations and output gradients, never forming per-record gradients), the second
back-propagates the loss again with each record weighted by its clipping factor. Here the one
backward pass computes only the gradients with respect to the trainable layers' *outputs*
(`torch.autograd.grad`, so no weight gradient is formed), and each layer then builds both pieces
from what it kept: the per-record gradient norms, and, once the clipping factors c_i are known, the
clipped sum  sum_i c_i * grad_i  (for a linear layer one matrix product, the same as the plain weight
gradient). The result is written to `p.grad`, exactly what Opacus' second pass leaves there, so
Opacus' optimizer adds the noise and takes the step as before (accounting, sampling and noise stay
Opacus').

One handler per layer type, Opacus-style: `nn.Linear` (ghost norm, or per-record gradients when
T^2 > in*out), `nn.Embedding` (ghost norm with a same-token mask), `nn.LayerNorm` (per-record
gradients: they are small). A model with any other trainable layer, a weight shared between layers,
or a layer run twice in one forward pass is refused (its per-record norm would be wrong).
`tests/integration/test_privacy.py and tests/unit/test_bookkeeping.py` checks the result against per-record gradients taken one record at a time.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Summed = Callable[[torch.Tensor], torch.Tensor]  # clipping factors (B,) -> the clipped gradient sum


def _per_record(gs: torch.Tensor) -> tuple[torch.Tensor, Summed]:
    """From per-record gradients (B, ...): squared norms and the clipped sum."""
    return gs.flatten(1).pow(2).sum(1), lambda c: torch.einsum("b,b...->...", c, gs)


def _linear(m: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> dict:
    b = a.shape[0]
    a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])
    out = {}
    if m.weight.requires_grad:
        t, (p, d) = a.shape[1], m.weight.shape
        if t * t <= p * d:  # ghost norm: <g g^T, a a^T> per record, never a (p, d) matrix per record
            norm2 = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2))
            if p >= d:  # scale the smaller of the two by the clipping factors
                out[m.weight] = (norm2, lambda c: torch.einsum("btp,btd->pd", g, a * c[:, None, None]))
            else:
                out[m.weight] = (norm2, lambda c: torch.einsum("btp,btd->pd", g * c[:, None, None], a))
        else:
            out[m.weight] = _per_record(torch.einsum("btp,btd->bpd", g, a))
    if m.bias is not None and m.bias.requires_grad:
        out[m.bias] = _per_record(g.sum(1))
    return out


def _embedding(m: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> dict:
    if not m.weight.requires_grad:
        return {}
    b, d = ids.shape[0], g.shape[-1]
    ids, g = ids.reshape(b, -1), g.reshape(b, -1, d)
    if m.padding_idx is not None:
        g = g * (ids != m.padding_idx).unsqueeze(-1)
    same = (ids[:, :, None] == ids[:, None, :]).to(g.dtype)  # a token's rows add up in the gradient
    norm2 = (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))

    def summed(c: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(m.weight).index_add_(0, ids.reshape(-1), (g * c[:, None, None]).reshape(-1, d))

    return {m.weight: (norm2, summed)}


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> dict:
    dims = tuple(range(1, x.dim() - len(m.normalized_shape)))  # token axes (none for a (B, d) input)

    def over_tokens(t: torch.Tensor) -> torch.Tensor:
        return t.sum(dims) if dims else t

    out = {}
    if m.weight is not None and m.weight.requires_grad:
        out[m.weight] = _per_record(over_tokens(g * F.layer_norm(x, m.normalized_shape, eps=m.eps)))
    if m.bias is not None and m.bias.requires_grad:
        out[m.bias] = _per_record(over_tokens(g))
    return out


HANDLERS = {nn.Linear: _linear, nn.Embedding: _embedding, nn.LayerNorm: _layer_norm}


class BookKeeping:
    """Attach to a model whose trainable parameters are final (after freezing, LoRA, Conv1D→Linear):

        bk = BookKeeping(model, max_grad_norm)
        with bk.recording():
            per_record = loss_fn(model(...))      # shape (B,), one loss per record
        bk.backward(per_record)                   # p.grad = sum_i clip_i * grad_i, for every trainable p
    """

    def __init__(self, model: nn.Module, max_grad_norm: float):
        self.max_grad_norm = max_grad_norm
        self.modules = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        self.params = [p for p in model.parameters() if p.requires_grad]
        owners = [id(p) for m in self.modules for p in m.parameters(recurse=False) if p.requires_grad]
        if len(owners) != len(set(owners)):  # a shared weight: its per-record norm would need both uses at once
            raise NotImplementedError("book-keeping clipping: a trainable parameter is shared between modules "
                                      "(untie it first, as safety/gpt2_dp.untie does for GPT-2's LM head)")
        if any(isinstance(m, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq or m.sparse)
               for m in self.modules):
            raise NotImplementedError("book-keeping clipping: embeddings with max_norm, scale_grad_by_freq or "
                                      "sparse gradients are not supported")
        unknown = sorted({type(m).__name__ for m in self.modules if type(m) not in HANDLERS})
        if unknown:
            raise NotImplementedError(f"book-keeping clipping has no handler for trainable {', '.join(unknown)}")
        self._seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self._recording = False
        self._hooks = [m.register_forward_hook(self._capture) for m in self.modules]
        self.norms: torch.Tensor | None = None  # the last batch's per-record gradient norms (before clipping)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._recording and torch.is_grad_enabled():
            if any(m is module for m, _, _ in self._seen):
                # Two calls of one layer add up in its gradient; their norms would be added as if separate
                # records' were, and a record's gradient could exceed the clipping bound. Refuse.
                raise NotImplementedError(f"book-keeping clipping: {type(module).__name__} ran twice in one "
                                          "forward pass")
            self._seen.append((module, inputs[0].detach(), output))

    @contextlib.contextmanager
    def recording(self):
        self._seen, self._recording = [], True
        try:
            yield self
        finally:
            self._recording = False

    def backward(self, per_record_loss: torch.Tensor) -> None:
        seen, self._seen = self._seen, []
        if not seen:
            raise RuntimeError("book-keeping clipping: no layer ran under recording()")
        ran = {id(m) for m, _, _ in seen}
        missing = [type(m).__name__ for m in self.modules if id(m) not in ran]
        if missing:  # a trainable layer that never ran: its weight may have been used some other way
            raise RuntimeError(f"book-keeping clipping: trainable {', '.join(sorted(set(missing)))} did not run "
                               "under recording()")
        grads = torch.autograd.grad(per_record_loss.sum(), [out for _, _, out in seen], allow_unused=True)
        total = torch.zeros(per_record_loss.shape[0], device=per_record_loss.device)
        pieces: list[tuple[nn.Parameter, Summed]] = []
        for (module, a, _), g in zip(seen, grads):
            if g is None:  # this layer's output does not reach the loss
                continue
            for p, (norm2, summed) in HANDLERS[type(module)](module, a, g.detach()).items():
                total = total + norm2
                pieces.append((p, summed))
        self.norms = total.clamp_min(0).sqrt()
        coef = (self.max_grad_norm / (self.norms + 1e-6)).clamp(max=1.0)  # Opacus' clipping factor
        clipped = {id(p): summed(coef).to(p.dtype) for p, summed in pieces}
        for p in self.params:  # assigned, never added: p.grad is exactly this batch's clipped sum
            # (a layer that ran but does not reach the loss gets a zero gradient; the noise is still added)
            p.grad = clipped.get(id(p), torch.zeros_like(p))

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
