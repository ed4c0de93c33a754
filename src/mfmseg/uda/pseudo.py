"""Teacher pseudo-labels and their confidence weight (DACS/DAFormer)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def pseudo_label(teacher_logits: Tensor, threshold: float, margins: Sequence[int] = (0, 0, 0, 0)
                 ) -> tuple[Tensor, Tensor]:
    """Labels = argmax of the softmax; weight = fraction of *all* pixels in the batch whose max probability ≥ τ.

    One scalar per batch, applied to every pixel, as the reference does (not a per-pixel mask). `margins`
    [top, bottom, left, right] in pixels get weight 0: rectification artefacts (ego car, image borders) of the
    Cityscapes frames. `teacher_logits` must already be at the label resolution (B×C×H×W).
    """
    prob = torch.softmax(teacher_logits.detach().float(), dim=1)
    max_prob, labels = prob.max(dim=1)
    q = max_prob.ge(threshold).float().mean()
    return labels, zero_margins(q * torch.ones_like(max_prob), margins)


@torch.no_grad()
def normalised_entropy(logits: Tensor) -> Tensor:
    """B×H×W entropy of softmax(logits) over the C classes divided by log C: 0 = certain, 1 = uniform."""
    log_prob = torch.log_softmax(logits.detach().float(), dim=1)
    entropy = -(log_prob.exp() * log_prob).sum(dim=1)
    return entropy / math.log(logits.shape[1]) if logits.shape[1] > 1 else torch.zeros_like(entropy)


def zero_margins(weight: Tensor, margins: Sequence[int]) -> Tensor:
    """Weight 0 on the [top, bottom, left, right] pixel margins of a B×H×W map (in place, returned)."""
    if len(margins) != 4:
        raise ValueError(f"margins must be [top, bottom, left, right], got {list(margins)}")
    top, bottom, left, right = (int(m) for m in margins)
    if top > 0:
        weight[:, :top, :] = 0
    if bottom > 0:
        weight[:, -bottom:, :] = 0
    if left > 0:
        weight[:, :, :left] = 0
    if right > 0:
        weight[:, :, -right:] = 0
    return weight


@torch.no_grad()
def pseudo_label_accuracy(teacher_logits: Tensor, labels: Tensor, truth: Tensor, threshold: float,
                          ignore_index: int = 255) -> dict[str, float]:
    """Analysis only, never a loss: how often the pseudo-labels equal the target's true labels, over all labelled
    pixels (`pseudo_acc`) and over the confident ones, max probability ≥ τ (`pseudo_acc_conf`). Confirmation bias
    shows as a teacher that grows more confident (q up) while `pseudo_acc_conf` falls. Empty when the crop has no
    labelled pixel (an unlabelled target gives all-ignore labels)."""
    valid = truth != ignore_index
    if not bool(valid.any()):
        return {}
    correct = labels.eq(truth) & valid
    confident = torch.softmax(teacher_logits.detach().float(), dim=1).amax(dim=1).ge(threshold) & valid
    out = {"pseudo_acc": int(correct.sum()) / int(valid.sum())}
    if bool(confident.any()):
        out["pseudo_acc_conf"] = int((correct & confident).sum()) / int(confident.sum())
    return out
