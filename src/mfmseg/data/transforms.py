"""Geometric and photometric pre-processing with an explicit `np.random.Generator` (reproducible per sample).

Images are resized bilinearly, labels always with nearest neighbour; crops are re-drawn (up to 10 times) until no
single class covers more than `cat_max_ratio` of the crop (mmseg's rule: ignore pixels do not count).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mfmseg.data.labels import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from mfmseg.errors import UserError


def target_size(w: int, h: int, bound: tuple[int, int], keep_ratio: bool,
                what: str = "an image") -> tuple[int, int]:
    """(W, H) after resizing: keep_ratio scales so that the long/short sides fit the bound's long/short sides.
    An aspect ratio so extreme that a side would round to 0 px cannot be resized: a UserError naming `what`."""
    if not keep_ratio:
        return int(bound[0]), int(bound[1])
    long_b, short_b = max(bound), min(bound)
    scale = min(long_b / max(w, h), short_b / min(w, h))
    size = int(w * scale + 0.5), int(h * scale + 0.5)
    if min(size) < 1:
        raise UserError(f"{what} is {w}×{h} px: fitted into resize {list(bound)} (keep_ratio) a side would be "
                        f"0 px (aspect ratio above {long_b * 2}:1); crop it into pieces")
    return size


def resize(img: Image.Image, label: np.ndarray | None, bound, keep_ratio: bool, what: str = "an image"):
    size = target_size(img.width, img.height, bound, keep_ratio, what)
    if size != (img.width, img.height):
        img = img.resize(size, Image.BILINEAR)
        if label is not None:
            label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    return img, label


def random_crop(img: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: np.random.Generator,
                cat_max_ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W) crop, padded (image 0, label 255) when the image is smaller."""
    ch, cw = crop
    h, w = label.shape
    if h < ch or w < cw:
        ph, pw = max(0, ch - h), max(0, cw - w)
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        h, w = label.shape
    for _ in range(10):
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop_label = label[y:y + ch, x:x + cw]
        if cat_max_ratio >= 1.0:
            break
        counts = np.bincount(crop_label[crop_label != IGNORE_INDEX].ravel(), minlength=256)
        if counts.sum() and counts.max() / counts.sum() < cat_max_ratio and (counts > 0).sum() > 1:
            break
    return img[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def _imagenet_stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kw = dict(device=like.device, dtype=like.dtype)
    return torch.tensor(IMAGENET_MEAN, **kw).view(3, 1, 1), torch.tensor(IMAGENET_STD, **kw).view(3, 1, 1)


def normalize_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """…×3×H×W float RGB on the 0–255 scale -> ImageNet-normalised (the library's image convention)."""
    mean, std = _imagenet_stats(rgb)
    return (rgb - mean) / std


def denormalize_rgb(img: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize_rgb`: ImageNet-normalised …×3×H×W -> RGB on the 0–255 scale (not clamped)."""
    mean, std = _imagenet_stats(img)
    return img * std + mean


def normalize(img: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 RGB -> 3×H×W float, ImageNet mean/std."""
    return normalize_rgb(torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float())
