"""BatchNorm running statistics: who may move them, and when.

A BatchNorm in train mode normalises with the batch's statistics and moves its running statistics (what
evaluation uses) toward them. In UDA every extra train-mode pass over target images therefore shifts the
evaluation statistics toward the target domain (AdaBN's effect; studies/mfm/README.md measured it as the one thing
MFM's extra pass bought on a BatchNorm encoder). Three places need control over that:

- `frozen_bn_statistics`: a pass that should normalise with its batch but leave the running statistics alone
  (MFM's decode of rebuilt features; the study's `freeze_encoder_bn` control);
- `bn_eval_mode`: a pass that normalises with the running statistics and moves nothing (the study's
  `encoder_bn_eval` control: MFM's gradient without an all-target batch's statistics);
- `checkpoint_frozen_bn`: activation checkpointing recomputes a segment in backward; without care that second
  forward moves every running statistic a second time;
- `Segmentor(norm_eval=True)` (`models.segmentor`): the encoder's BatchNorms stay in eval mode in every pass.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch.utils.checkpoint as cp
from torch import Tensor, nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorms(module: nn.Module) -> list[BatchNorm]:
    return [m for m in module.modules() if isinstance(m, BatchNorm)]


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorms of `module` keep normalising with batch statistics but leave their running
    statistics (mean, var and `num_batches_tracked`) exactly as they were: momentum 0, then the counter restored."""
    norms = [m for m in batchnorms(module) if m.training and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def bn_eval_mode(module: nn.Module) -> Iterator[None]:
    """The train-mode BatchNorms of `module` in eval mode for one pass (they normalise with, and keep, their
    running statistics), back in train mode afterwards. Not for checkpointed segments: their recomputation in
    backward runs after this context has ended, in train mode, and would not match the forward."""
    norms = [m for m in batchnorms(module) if m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


def checkpoint_frozen_bn(segment: nn.Module, x: Tensor) -> Tensor:
    """`torch.utils.checkpoint` of `segment(x)` whose recomputation in backward does not touch BatchNorm running
    statistics: the forward moved them once, as it does without checkpointing; the recomputed activations are
    the same (train-mode BatchNorm normalises with the batch's statistics either way)."""
    contexts: Callable[[], tuple] = lambda: (contextlib.nullcontext(), frozen_bn_statistics(segment))
    return cp.checkpoint(segment, x, use_reentrant=False, context_fn=contexts)


def set_bn_eval(module: nn.Module) -> None:
    """Every BatchNorm of `module` in eval mode: running statistics used and never updated; affine weights
    still receive gradients."""
    for m in batchnorms(module):
        m.eval()


__all__ = ["BatchNorm", "batchnorms", "bn_eval_mode", "checkpoint_frozen_bn", "frozen_bn_statistics", "set_bn_eval"]
