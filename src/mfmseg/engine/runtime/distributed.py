"""Data parallelism without the DDP wrapper: the UDA step calls encode/decode separately and runs several
backward passes per iteration (source, mixed, MIC, MFM), which DistributedDataParallel's one-forward-one-backward
hooks do not fit. Instead every rank computes its gradients locally, `allreduce_gradients` averages them once per
iteration (in place, in ~32 MiB buckets), and rank 0's buffers (BatchNorm statistics of student and teacher) are
broadcast after each step, so that student, teacher and Rebuilder stay identical on every rank.

Launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment): nccl on GPUs, gloo on CPU.

Failure: a rank that fails tears its process group down without a barrier (`shutdown_distributed(failed=True)`)
and exits with its own error; the other ranks' next collective then fails (gloo: the peer is gone) or times out
(`train.dist_timeout_s`, nccl's watchdog), and torchrun stops whatever is left when one worker exits non-zero.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
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


def init_distributed(device_kind: str, timeout_s: float = 1800) -> DistContext:
    """Join the process group when launched by torchrun; a single process otherwise. `timeout_s` bounds how long a
    rank waits in a collective for the others (a failed or hung peer ends the run after it, not after nccl's
    default 10 minutes, which a long evaluation or checkpoint write could also exceed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return ctx


def shutdown_distributed(failed: bool = False) -> None:
    """Leave the process group. Garbage is collected first: on CPU, live references to process-group tensors at
    exit make processes abort at random otherwise. A clean end meets the other ranks at a barrier; after a failure
    there is no barrier, since the other ranks may be inside another collective that it would pair with (a hang
    until the watchdog, or a mismatched exchange that hides the real error): the group is torn down at once."""
    if not dist.is_initialized():
        return
    gc.collect()
    if not failed:
        dist.barrier()
        dist.destroy_process_group()
        return
    try:
        if dist.get_backend() == "nccl":  # destroy could wait on the peers' pending kernels; abort does not
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the error being reported is the original one, not the teardown's
        pass


BUCKET_BYTES = 32 * 2**20


def _buckets(params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    """Consecutive parameters of one dtype, about BUCKET_BYTES each: the extra memory of the averaging."""
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        if not buckets or size >= BUCKET_BYTES or buckets[-1][0].dtype != p.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel() * p.element_size()
    return buckets


def allreduce_gradients(params: Iterable[nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks, in place, one collective per ~32 MiB bucket (peak extra memory: one bucket,
    not a copy of every gradient). A parameter without a gradient sends zeros (every rank sends the same layout)
    plus a flag; one that no rank gave a gradient keeps `grad=None`, so the optimiser skips it (no weight decay, no
    moment update) exactly as on a single process."""
    params = [p for p in params if p.requires_grad]
    for bucket in _buckets(params):
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype,
                                                                                    device=p.device)
                          for p in bucket]
                         + [torch.tensor([float(p.grad is not None) for p in bucket], dtype=bucket[0].dtype,
                                         device=bucket[0].device)])
        dist.all_reduce(flat)
        flat /= world_size
        had_grad = flat[-len(bucket):].tolist()
        offset = 0
        for p, flag in zip(bucket, had_grad):
            chunk = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is not None:
                p.grad.copy_(chunk)
            elif flag > 0:
                p.grad = chunk.clone()
        del flat


def broadcast_state(modules: Iterable[nn.Module | None], params: bool = True) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) and optionally parameters to every rank: one broadcast per
    dtype, not one per tensor (hundreds per iteration for a ResNet-101 student and teacher)."""
    tensors = [t for m in modules if m is not None
               for t in [*m.buffers(), *(m.parameters() if params else ())]]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t.data)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        for t, chunk in zip(group, flat.split([t.numel() for t in group])):
            t.copy_(chunk.view_as(t))


def all_ranks_agree(flag: bool) -> bool:
    """True on every rank when `flag` is true on all ranks (a NaN on one rank stops them all together)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)
