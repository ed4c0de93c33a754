"""The contract of an auxiliary loss (FD, MIC, MFM, ...): what it gets from the step, what it gives back.

A term is an `nn.Module` (so the method owns its parameters, if any) with up to three hooks, called by
`uda.step.UDAStep` in the order of docs/method.md §3:

- `on_source(student, SourcePass, run)`: shares the source encoder pass; its losses join the source backward;
- `on_mixed(student, MixedPass, run)`: shares the ClassMix encoder pass; its losses join the mixed backward;
- `on_target(student, TargetPass, run)`: its own passes on the target crop against the teacher's pseudo-labels,
  after ClassMix; its losses get their own backward.

Each hook returns a `TermOutput` (named losses, already weighted by the term's λ; optionally a function that renders
panel images) or None when the term has nothing to do there. The step checks every loss for NaN, logs it and calls
backward; a term never calls backward, never steps an optimiser, and does not know whether a panel is due.
Self-training hooks (`on_mixed`, `on_target`) run only when the method has a teacher. A term with parameters names
them in `param_parts()` (own lr group) and the checkpoint sections it needs in `checkpoint_sections()`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mfmseg.models.segmentor import SegmentationModel

Visuals = Callable[[], dict[str, Tensor]]


@dataclass
class Run:
    """One iteration's settings shared by every pass: where it is, how to compute, where randomness comes from."""
    iteration: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    generator: torch.Generator | None = None  # CPU generator; None = torch's global RNG (seeded by the trainer)

    def autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


@dataclass
class SourcePass:
    img: Tensor  # B×3×H×W, normalised
    label: Tensor  # B×H×W ground truth
    feats: Any  # student.encode(img): training features (opaque: only the student looks inside)


@dataclass
class MixedPass:
    img: Tensor  # the ClassMix image after colour jitter and blur
    label: Tensor  # ground truth where source pixels were pasted, pseudo-labels elsewhere
    weight: Tensor  # 1 on pasted pixels, the pseudo-label weight elsewhere
    feats: Any


@dataclass
class TargetPass:
    img: Tensor  # the un-augmented target crop
    label: Tensor  # the teacher's pseudo-labels
    weight: Tensor  # their per-pixel weight (confidence q, 0 on the ignore margins)
    entropy: Tensor | None = None  # B×H×W entropy of the teacher's softmax / log(classes), in [0, 1]


@dataclass
class TermOutput:
    losses: dict[str, Tensor]
    visuals: Visuals | None = None  # called only when a panel is wanted; tensors at the image's size


class AuxiliaryLoss(nn.Module):
    """Base class of the terms: every hook defaults to 'nothing here'."""

    reads_teacher_entropy = False  # True: the step fills `TargetPass.entropy` (a softmax over the crop) for it

    def on_source(self, student: SegmentationModel, src: SourcePass, run: Run) -> TermOutput | None:
        return None

    def on_mixed(self, student: SegmentationModel, mixed: MixedPass, run: Run) -> TermOutput | None:
        return None

    def on_target(self, student: SegmentationModel, tgt: TargetPass, run: Run) -> TermOutput | None:
        return None

    def param_parts(self) -> list[tuple[str, nn.Module, float]]:
        """(group name, module, lr) for every trained module the term owns; the optimiser gives each its own group."""
        return []

    def checkpoint_sections(self) -> dict[str, nn.Module]:
        """{checkpoint key: module} for state that a resumed run needs (frozen copies of the student are rebuilt)."""
        return {}

    def frozen_networks(self) -> list[nn.Module]:
        """Copies of the student the term runs (FD's ImageNet model): what `train.compile` compiles beside it."""
        return []
