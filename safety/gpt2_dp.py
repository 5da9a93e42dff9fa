"""Make a Hugging Face GPT-2 trainable under Opacus (ghost clipping included).

- HF `Conv1D` (x @ W + b, W stored (in, out)) has no Opacus grad/norm sampler: swap it for an
  equivalent `nn.Linear` (W transposed) for training, and back before saving, so the saved model is
  plain GPT-2 again.
- `lm_head` is tied to `wte`; ghost clipping refuses tied parameters, so `untie` gives `lm_head`
  its own copy (the saved config then says `tie_word_embeddings: false`).
- Position ids must be per example (`position_ids(...)`, made with `repeat`, not `expand`).
- Optional LoRA (peft) on the converted projections: `add_lora`, and `merge_lora` before saving.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def conv1d_to_linear(module: nn.Module) -> int:
    """Replace every Conv1D below `module` by an equal nn.Linear; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, Conv1D):
            in_f, out_f = child.weight.shape
            lin = nn.Linear(in_f, out_f, bias=child.bias is not None, device=child.weight.device,
                            dtype=child.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(child.weight.t())
                if child.bias is not None:
                    lin.bias.copy_(child.bias)
            setattr(module, name, lin)
            count += 1
        else:
            count += conv1d_to_linear(child)
    return count


def linear_to_conv1d(module: nn.Module, names=("c_attn", "c_proj", "c_fc")) -> int:
    """Undo `conv1d_to_linear` for GPT-2's layers (found by their HF names)."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name in names:
            conv = Conv1D(child.out_features, child.in_features).to(child.weight.device, child.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(child.weight.t())
                conv.bias.copy_(child.bias)
            setattr(module, name, conv)
            count += 1
        else:
            count += linear_to_conv1d(child, names)
    return count


def untie(lm: nn.Module) -> None:
    """Give the LM head its own weight (a copy of the input embeddings)."""
    head, emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    if head is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone())
    lm.config.tie_word_embeddings = False


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0..T-1 for every row, a real (B, T) tensor: Opacus' embedding norm sampler views it."""
    b, t = attention_mask.shape
    return torch.arange(t, device=attention_mask.device).unsqueeze(0).repeat(b, 1)


def train_top(model: nn.Module, blocks: int, lm_head: bool, freeze_rest: bool = True) -> list[str]:
    """Freeze all but the top `blocks` transformer blocks, the final LayerNorm, the intent head and
    (if `lm_head`) the LM head; blocks < 0 trains everything. Fewer trainable parameters means less
    DP noise in total and a shorter backward pass. `freeze_rest=False` keeps what is already trainable
    (LoRA adapters). Returns the trainable parameter names."""
    for p in model.parameters():
        if freeze_rest or blocks < 0:
            p.requires_grad_(blocks < 0)
    if blocks < 0:
        return [n for n, _ in model.named_parameters()]
    body = model.lm.transformer
    keep = [body.h[i] for i in range(max(0, len(body.h) - blocks), len(body.h))] + [body.ln_f, model.score]
    keep += [model.ngrams] if model.ngrams is not None else []  # the intent head's n-gram logits
    if lm_head:
        keep.append(model.lm.get_output_embeddings())
    for m in keep:
        for p in m.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> list[str]:
    """peft LoRA adapters (rank `rank`) on every GPT-2 projection of `model.lm`, after
    `conv1d_to_linear`, on the model's device. Only the adapters stay trainable here; the caller
    decides about heads and norms. Returns the adapter parameter names."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    inject_adapter_in_model(config, model.lm)
    return [n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and put the plain layer back (for saving)."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, LoraLayer):
            child.merge()
            setattr(module, name, child.get_base_layer())
            count += 1
        else:
            count += merge_lora(child)
    return count
