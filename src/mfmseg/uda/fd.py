"""ImageNet feature distance (DAFormer "FD"): keep thing-class features near the ImageNet model's."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.config import FDConfig
from mfmseg.data.labels import IGNORE_INDEX
from mfmseg.models.segmentor import SegmentationModel
from mfmseg.uda.term import AuxiliaryLoss, Run, SourcePass, TermOutput


@torch.no_grad()
def downscale_label_ratio(labels: Tensor, scale: int, min_ratio: float, num_classes: int) -> Tensor:
    """B×H×W labels -> B×(H/s)×(W/s) majority class per s×s cell, 255 where the majority covers < `min_ratio`
    (or is the ignore label)."""
    if scale <= 1:
        return labels.clone()
    b, h, w = labels.shape
    lab = labels.clone()
    lab[(lab == IGNORE_INDEX) | (lab >= num_classes) | (lab < 0)] = num_classes
    onehot = F.one_hot(lab[:, : h // scale * scale, : w // scale * scale], num_classes + 1)
    ratio = F.avg_pool2d(onehot.permute(0, 3, 1, 2).float(), kernel_size=scale)
    best_ratio, best = ratio.max(dim=1)
    best[best == num_classes] = IGNORE_INDEX
    best[best_ratio < min_ratio] = IGNORE_INDEX
    return best


def feature_distance(student_feat: Tensor, imnet_feat: Tensor, labels: Tensor, thing_classes: Sequence[int],
                     cell_ratio: float, num_classes: int) -> Tensor:
    """Mean L2 distance (over channels) between the two B×C×h×w feature maps on thing-class cells.

    Without any thing cell the result is an exact 0 that still depends on `student_feat`, so the backward graph
    stays uniform (the reference averages an empty selection and logs NaN).
    """
    scale = labels.shape[-1] // student_feat.shape[-1]
    cells = downscale_label_ratio(labels, scale, cell_ratio, num_classes)
    if tuple(cells.shape[-2:]) != tuple(student_feat.shape[-2:]):
        cells = F.interpolate(cells[:, None].float(), size=student_feat.shape[-2:], mode="nearest")[:, 0].long()
    things = torch.tensor(list(thing_classes), device=labels.device, dtype=cells.dtype)
    keep = torch.isin(cells, things)
    dist = torch.norm(student_feat.float() - imnet_feat.detach().float(), p=2, dim=1)
    if not bool(keep.any()):
        return (dist * 0.0).sum()
    return dist[keep].mean()


def make_frozen_copy(model: nn.Module) -> nn.Module:
    """The ImageNet reference: eval mode (running BN statistics, no dropout), no gradients."""
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


class FeatureDistanceLoss(AuxiliaryLoss):
    """λ_FD · FD between the student's deepest context features of the source image and a frozen copy of the
    student as built (the ImageNet weights). The copy is made at construction and never saved: a resumed run
    rebuilds it from the freshly built student."""

    def __init__(self, student: SegmentationModel, cfg: FDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.imnet = make_frozen_copy(student)

    def on_source(self, student: SegmentationModel, src: SourcePass, run: Run) -> TermOutput:
        with torch.no_grad(), run.autocast():  # HRDA: the context scale (the 0.5-resized image), as the reference
            imnet_feats = self.imnet.encode_context(src.img)
        fd = feature_distance(student.context_features(src.feats)[-1], imnet_feats[-1], src.label,
                              self.cfg.thing_classes, self.cfg.cell_ratio, student.num_classes)
        return TermOutput({"loss_fd": self.cfg.weight * fd})

    def frozen_networks(self) -> list[nn.Module]:
        return [self.imnet]

    def train(self, mode: bool = True) -> "FeatureDistanceLoss":
        """The ImageNet copy stays in eval mode whatever the method is switched to."""
        super().train(mode)
        self.imnet.eval()
        return self
