"""Pixel-wise cross-entropy as the reference (mmseg 0.x) reduces it.

mmseg 0.x multiplies the per-pixel CE (0 on ignored pixels) by the pixel weight and averages over *all* pixels,
ignored ones included; `F.cross_entropy(reduction="mean")` would divide by the non-ignored count instead, which
changes the effective loss scale whenever a crop has ignore regions. We keep the reference's reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mfmseg.models.hrda import HRDALogits

IGNORE_INDEX = 255


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def weighted_ce(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """CE of `logits` (B×C×h×w, upsampled to the label size) against `labels` (B×H×W), times `weight` (B×H×W)."""
    logits = resize_logits(logits.float(), tuple(labels.shape[-2:]))
    per_pixel = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX)
    if weight is not None:
        per_pixel = per_pixel * weight.float()
    return per_pixel.mean()


def segmentation_loss(output: Tensor | HRDALogits, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """The supervised loss of a segmentor's training output (`decode(encode(x))`) against labels at x's size.

    Plain logits: `weighted_ce`. HRDA: (1 − w)·CE(fused) + w·CE(detail, labels and weight cropped to the detail
    window), w = `output.detail_weight` (0.1), both with the same reduction as `weighted_ce`.
    """
    if not isinstance(output, HRDALogits):
        return weighted_ce(output, labels, weight)
    y1, y2, x1, x2 = output.box
    crop_weight = weight[:, y1:y2, x1:x2] if weight is not None else None
    w = output.detail_weight
    fused = weighted_ce(output.fused, labels, weight)
    return (1 - w) * fused + w * weighted_ce(output.detail, labels[:, y1:y2, x1:x2], crop_weight)
