"""Data parallelism without the DDP wrapper: the UDA step calls encode/decode separately and runs several
backward passes per iteration (source, mixed, MIC, MFM), which DistributedDataParallel's one-forward-one-backward
hooks do not fit. Instead every rank computes its gradients locally, `allreduce_gradients` averages them once per
iteration (one flat buffer: one collective), and rank 0's buffers (BatchNorm statistics of student and teacher) are
broadcast after each step, so that student, teacher and Rebuilder stay identical on every rank.

Launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment): nccl on GPUs, gloo on CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
    return ctx


def shutdown_distributed() -> None:
    """Collect garbage before tearing down gloo: on CPU, live references to process-group tensors at exit make
    processes abort at random otherwise."""
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def allreduce_gradients(params: Iterable[nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks in one collective; a parameter without a gradient contributes zeros so that
    every rank sends the same layout."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_state(modules: Iterable[nn.Module | None], params: bool = True) -> None:
    """Copy rank 0's parameters (optional) and buffers to every rank."""
    for module in modules:
        if module is None:
            continue
        tensors = list(module.buffers()) + (list(module.parameters()) if params else [])
        for t in tensors:
            dist.broadcast(t.data, src=0)


def all_ranks_agree(flag: bool) -> bool:
    """True on every rank when `flag` is true on all ranks (a NaN on one rank stops them all together)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)
