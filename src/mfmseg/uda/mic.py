"""MIC's masked image consistency: random blocks of the target image are zeroed (after normalisation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mfmseg.config import MICConfig, MixConfig
from mfmseg.models.segmentor import SegmentationModel
from mfmseg.uda.mixing import strong_augment
from mfmseg.uda.term import AuxiliaryLoss, Run, TargetPass, TermOutput


def block_mask(batch: int, height: int, width: int, block_size: int, ratio: float,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """B×1×H×W float mask, 1 = visible: one U(0,1) per block, kept when > `ratio`, blown up with nearest."""
    grid = (max(1, round(height / block_size)), max(1, round(width / block_size)))
    keep = (torch.rand((batch, 1, *grid), generator=generator) > ratio).float().to(device)
    return F.interpolate(keep, size=(height, width), mode="nearest")


def mask_image(img: Tensor, block_size: int, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    b, _, h, w = img.shape
    return img * block_mask(b, h, w, block_size, ratio, generator, img.device).to(img.dtype)


class MaskedImageConsistencyLoss(AuxiliaryLoss):
    """MIC: the target image, colour-augmented on its own draws, with blocks zeroed, against the same
    pseudo-labels and weight as the mixed loss."""

    def __init__(self, cfg: MICConfig, mix: MixConfig) -> None:
        super().__init__()
        self.cfg, self.mix = cfg, mix

    def on_target(self, student: SegmentationModel, tgt: TargetPass, run: Run) -> TermOutput:
        with torch.no_grad():
            augmented = strong_augment(tgt.img, self.mix, run.generator)
            masked = mask_image(augmented, self.cfg.block_size, self.cfg.mask_ratio, run.generator)
        with run.autocast():
            output = student.decode(student.encode(masked))
        return TermOutput({"loss_mic": self.cfg.weight * student.loss(output, tgt.label, tgt.weight)})
