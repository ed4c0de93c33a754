"""ClassMix and the strong photometric augmentation of the mixed image (DACS, as DAFormer runs it).

Randomness is drawn from an explicit `torch.Generator` (CPU) when one is given, else from torch's global RNG
that the trainer seeds per iteration; small random draws happen on the CPU so one generator serves any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mfmseg.config import MixConfig
from mfmseg.data.labels import IGNORE_INDEX
from mfmseg.data.transforms import denormalize_rgb, normalize_rgb


def _rand(generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(_rand(generator))


# ---- ClassMix ---------------------------------------------------------------------------------------------
def class_mix_masks(labels: Tensor, *, batch_wide_classes: bool = False,
                    generator: torch.Generator | None = None) -> Tensor:
    """B×H×W bool masks, True where the source pixel is pasted: per image, ceil(n/2) of its n classes.

    The reference draws from `torch.unique(labels)` of the whole *batch* for every image (a known quirk, so an
    image may receive classes it does not contain and paste fewer pixels); `batch_wide_classes=True` reproduces
    it exactly, the ignore label (255) included among the candidates as the reference has it. Per image (the
    default) 255 is never a candidate: pasting ignore pixels only removes supervision.
    """
    masks = []
    for label in labels:
        classes = torch.unique(labels if batch_wide_classes else label)
        if not batch_wide_classes:
            classes = classes[classes != IGNORE_INDEX]
        n = int(classes.numel())
        chosen = classes[torch.randperm(n, generator=generator)[: (n + n % 2) // 2].to(classes.device)]
        masks.append(torch.isin(label, chosen))
    return torch.stack(masks)


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Source where `mask` (B×H×W) is True, target elsewhere; images (B×C×H×W) and maps (B×H×W) alike."""
    m = mask if source.dim() == mask.dim() else mask.unsqueeze(1)
    return torch.where(m, source, target.to(source.dtype))


# ---- photometric augmentation --------------------------------------------------------------------------------
def denormalize01(img: Tensor) -> Tensor:
    return denormalize_rgb(img) / 255.0


def renormalize01(img01: Tensor) -> Tensor:
    return normalize_rgb(img01 * 255.0)


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """N×3×H×W in [0,1] -> HSV with hue in [0,1)."""
    r, g, b = rgb.unbind(1)
    maxc, argmax = rgb.max(1)
    minc = rgb.min(1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.stack([(g - b) / safe % 6, (b - r) / safe + 2, (r - g) / safe + 4]).gather(0, argmax[None])[0]
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue)) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    h, s, v = hsv.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - (v * s)[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def _jitter_one(img01: Tensor, strength: float, generator: torch.Generator | None) -> Tensor:
    """Kornia-0.5 ColorJitter (the reference's): additive brightness, multiplicative contrast, HSV saturation
    and hue, in a random order, each factor drawn per image."""
    lo = max(0.0, 1.0 - strength)
    factors = {"brightness": _uniform(generator, lo, 1 + strength) - 1.0,
               "contrast": _uniform(generator, lo, 1 + strength),
               "saturation": _uniform(generator, lo, 1 + strength),
               "hue": _uniform(generator, -strength, strength)}
    for idx in torch.randperm(4, generator=generator).tolist():
        name = ("brightness", "contrast", "saturation", "hue")[idx]
        f = factors[name]
        if name == "brightness":
            img01 = (img01 + f).clamp(0, 1)
        elif name == "contrast":
            img01 = (img01 * f).clamp(0, 1)
        else:
            hsv = rgb_to_hsv(img01)
            if name == "saturation":
                hsv = torch.stack([hsv[:, 0], (hsv[:, 1] * f).clamp(0, 1), hsv[:, 2]], 1)
            else:
                hsv = torch.stack([(hsv[:, 0] + f) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
            img01 = hsv_to_rgb(hsv).clamp(0, 1)
    return img01


def color_jitter(img: Tensor, strength: float, p: float, generator: torch.Generator | None = None) -> Tensor:
    """On normalised images: one apply/skip draw for the batch (prob `p`), factors per image, on [0,1] RGB."""
    if strength <= 0 or float(_rand(generator)) >= p:
        return img
    img01 = denormalize01(img.float())
    out = torch.cat([_jitter_one(img01[i: i + 1], strength, generator) for i in range(img.shape[0])])
    return renormalize01(out).to(img.dtype)


def blur_kernel_size(side: int) -> int:
    """≈10 % of the side, odd: ceil(0.1·side), minus one when even (the reference's formula)."""
    k = math.ceil(0.1 * side)
    return max(1, k - 1 if k % 2 == 0 else k)


def _gaussian_1d(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def gaussian_blur_(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, reflect padding, kernel ≈10 % of each side."""
    h, w = img.shape[-2:]
    ky, kx = blur_kernel_size(h), blur_kernel_size(w)
    c = img.shape[1]
    out = img.float()
    gy = _gaussian_1d(ky, sigma, img.device, out.dtype).view(1, 1, ky, 1).repeat(c, 1, 1, 1)
    gx = _gaussian_1d(kx, sigma, img.device, out.dtype).view(1, 1, 1, kx).repeat(c, 1, 1, 1)
    pad_y, pad_x = ky // 2, kx // 2
    mode = "reflect" if pad_y < h and pad_x < w else "replicate"
    out = F.conv2d(F.pad(out, (0, 0, pad_y, pad_y), mode=mode), gy, groups=c)
    out = F.conv2d(F.pad(out, (pad_x, pad_x, 0, 0), mode=mode), gx, groups=c)
    return out.to(img.dtype)


def gaussian_blur(img: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """One apply/skip draw for the batch (prob `p`), σ ~ U(0.15, 1.15) per image; linear, so it runs on the
    normalised image as in the reference."""
    if float(_rand(generator)) >= p:
        return img
    return torch.cat([gaussian_blur_(img[i: i + 1], _uniform(generator, 0.15, 1.15))
                      for i in range(img.shape[0])])


def strong_augment(img: Tensor, cfg: MixConfig, generator: torch.Generator | None = None) -> Tensor:
    """Colour jitter then (optionally) blur: the reference's strong transform without the mixing."""
    img = color_jitter(img, cfg.color_jitter_strength, cfg.color_jitter_p, generator)
    if cfg.blur:
        img = gaussian_blur(img, 0.5, generator)
    return img
