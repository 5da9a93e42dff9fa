"""Data-parallel training on several processes or machines, with PyTorch's own engine (torch.distributed).

`candor train --nproc N` starts N processes with torchrun (`torch.distributed.run`); on several machines
run torchrun yourself (README). Every process builds the same model from the same seed, then rank 0's
weights are broadcast. Each step every process trains on its share of the same global batch; the
gradients are all-reduced (averaged, weighted by each share's size) before the one optimizer step, so
the update is the single-process update of the whole batch. Under DP, Opacus' DPDDP and its distributed
optimizer do the same with per-record clipping, and the noise is added once (on rank 0).

Only rank 0 writes checkpoints, the model and logs; the others wait for it at the end. Backend: gloo on
CPU, NCCL on GPUs.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def requested() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (a no-op for one process); the device this rank uses."""
    if not requested():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def share(batch: Sequence[int], sizes: Sequence[int] | None = None) -> tuple[list[int], float]:
    """This rank's part of a global batch and the weight of its mean loss, so that averaging the ranks'
    gradients gives the gradient of the whole batch's mean loss: len(part)·world/len(batch) for a mean
    over records, or with `sizes` (each record's count of loss terms, e.g. target tokens, for a mean over
    tokens) size(part)·world/size(batch). A rank whose part is empty (a batch smaller than the world)
    trains on one record with weight 0."""
    sizes = list(sizes) if sizes is not None else [1] * len(batch)
    picked = list(range(len(batch)))[rank()::world()]
    if not picked:
        return list(batch[:1]), 0.0
    return [batch[j] for j in picked], sum(sizes[j] for j in picked) * world() / max(1, sum(sizes))


def average_gradients(params) -> None:
    """All-reduce the gradients (mean over ranks). Every rank has gradients for the same parameters."""
    if world() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one message, not one per tensor
    dist.all_reduce(flat)
    flat /= world()
    k = 0
    for g in grads:
        g.copy_(flat[k:k + g.numel()].view_as(g))
        k += g.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    if world() > 1:
        with torch.no_grad():
            for p in module.parameters():
                dist.broadcast(p.data, 0)


def from_main(obj):
    """Rank 0's value of `obj` on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
