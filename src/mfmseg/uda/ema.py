"""The mean teacher: an exponential moving average of the student's parameters.

Buffers (BatchNorm running statistics) are *not* averaged, as in the DACS/DAFormer reference: the teacher's BN
layers stay in train mode and normalise with the statistics of the batch they see, so their running buffers are
never read during training; they keep whatever the teacher's own forward passes accumulate (the copies made at
construction, then updated by the teacher's batches). Dropout and drop-path are switched off in the teacher so
that its pseudo-labels are deterministic given the batch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd


def _is_stochastic_depth(module: nn.Module) -> bool:
    """Drop-path layers have no common base class: timm, transformers and our models name them DropPath."""
    return "droppath" in type(module).__name__.lower()


def set_teacher_mode(teacher: nn.Module) -> nn.Module:
    """Train mode (BN on batch statistics) with dropout and drop-path off, as the reference teacher runs."""
    teacher.train()
    for m in teacher.modules():
        if isinstance(m, _DropoutNd) or _is_stochastic_depth(m):
            m.training = False
    return teacher


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of the student (no gradients; updated only through `ema_update`)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return set_teacher_mode(teacher)


def ema_coefficient(iteration: int, alpha: float) -> float:
    """a = min(1 - 1/(it+1), alpha): a plain copy at iteration 0, a faster-moving average early on."""
    return min(1.0 - 1.0 / (iteration + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, iteration: int, alpha: float) -> float:
    """θ_t ← a·θ_t + (1-a)·θ_s for every parameter (buffers untouched); returns a."""
    a = ema_coefficient(iteration, alpha)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}")
    for t, s in zip(t_params, s_params):
        t.mul_(a).add_(s.detach().to(t.dtype), alpha=1.0 - a)
    return a
