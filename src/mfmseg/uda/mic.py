"""MIC's masked image consistency: random blocks of the target image are zeroed (after normalisation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def block_mask(batch: int, height: int, width: int, block_size: int, ratio: float,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """B×1×H×W float mask, 1 = visible: one U(0,1) per block, kept when > `ratio`, blown up with nearest."""
    grid = (max(1, round(height / block_size)), max(1, round(width / block_size)))
    keep = (torch.rand((batch, 1, *grid), generator=generator) > ratio).float().to(device)
    return F.interpolate(keep, size=(height, width), mode="nearest")


def mask_image(img: Tensor, block_size: int, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    b, _, h, w = img.shape
    return img * block_mask(b, h, w, block_size, ratio, generator, img.device).to(img.dtype)
