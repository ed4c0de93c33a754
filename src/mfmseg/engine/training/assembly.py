"""The training assembly, built in one place for the trainer, `mfmseg cost` and the benchmarks: the student
(`build_model`), activation checkpointing, SyncBatchNorm, the UDA step (teacher, FD copy, Rebuilder), `torch.compile`
and the optimiser over the step's parameter groups, in that order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mfmseg.config import Config
from mfmseg.engine.runtime.distributed import DistContext
from mfmseg.engine.training.optim import build_optimizer, param_groups
from mfmseg.errors import UserError
from mfmseg.models.segmentor import Segmentor
from mfmseg.models.zoo import build_model
from mfmseg.uda.step import UDAStep


@dataclass
class TrainingAssembly:
    """What one training iteration runs: the student, the UDA step that owns it (and the teacher, FD copy and
    Rebuilder), and the optimiser over their trained parameters (None when built without one)."""
    student: Segmentor
    step: UDAStep
    optimizer: torch.optim.Optimizer | None


def compile_networks(networks: list[torch.nn.Module], **options: Any) -> None:
    """`torch.compile` every part (encoder, decode head, HRDA's scale attention) of each network, in place: the
    step calls `encode` and `decode` separately, so parts, not whole models; in place, so that parameter names
    (checkpoints, export) stay those of the plain model. The teacher's and the ImageNet copy's forwards (the
    teacher's HRDA sliding-window pass is one of the costliest of a step) are compiled too. `options` go to
    `torch.compile` (a benchmark's backend)."""
    for net in networks:
        for part in net.children():
            part.compile(**options)


def build_training_assembly(cfg: Config, device: torch.device | str, ctx: DistContext | None = None, *,
                            optimizer: bool = True, runnable: bool = True,
                            compile_options: dict[str, Any] | None = None) -> TrainingAssembly:
    """`cfg`'s student, UDA step and optimiser on `device`, with `train.grad_checkpointing`, `train.sync_bn` (a
    multi-GPU run only: `ctx` is the process group, a single process by default) and `train.compile` (with
    `compile_options`, e.g. a benchmark's backend) applied here and nowhere else. The global RNGs draw the initial
    weights: seed them first.

    `runnable=False` builds the networks only, to be measured (`mfmseg cost` on the meta device, then fake
    tensors): no checkpointing (the measurement sets it on the student per variant), no SyncBatchNorm (its memory
    is BatchNorm's, and it needs a process group) and no compile.
    `optimizer=False` leaves the optimiser out (`optimizer` is then None)."""
    device = torch.device(device)
    student = build_model(cfg.model).to(device)
    if cfg.train.grad_checkpointing and runnable:
        student.set_grad_checkpointing(True)
    if cfg.train.sync_bn and runnable:
        if not (ctx is not None and ctx.enabled and device.type == "cuda"):
            raise UserError("train.sync_bn=true needs a multi-GPU run (torchrun on CUDA devices)")
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    step = UDAStep(student, cfg.uda, crop_hw=tuple(cfg.data.target.crop), device=device)
    if cfg.train.compile and runnable:  # after the teacher and FD copies exist: a deep copy drops a compiled call
        compile_networks(step.networks(), **(compile_options or {}))
    opt = build_optimizer(param_groups(student, cfg.optim, step.param_parts()), cfg.optim) if optimizer else None
    return TrainingAssembly(student, step, opt)
