"""Whole-image and sliding-window inference, and labels at any output size in bounded memory.

The network sees the image at the size the caller resized it to (`data.val.resize` bounds it), so logits at that
*input* size cost 4·C bytes per input pixel whatever the original image is. What grows with the original image is
the output: bilinear logits at full resolution would cost 4·C bytes per output pixel (76 for 19 classes), so a
very wide or tall image would exhaust memory. `infer_labels` therefore never builds them: it upsamples and takes
the argmax a band of output rows at a time (at most `BAND_BYTES` of logits), writing one byte per output pixel.
The band is the same bilinear interpolation as one `F.interpolate` call (the same source rows and weights; the
values agree to float rounding, ~1e-6), so the labels are the argmax of the full-resolution logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.models.sliding import sliding_window_mean

BAND_BYTES = 4 << 20  # logits of one band of output rows (float32), whatever the output size


def _pad_to_multiple(img: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    h, w = img.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return (F.pad(img, (0, pw, 0, ph)) if ph or pw else img), (h, w)


def _upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _whole(model: nn.Module, img: Tensor) -> Tensor:
    """Float logits at the image's size (the model runs on it padded to the encoder's multiple)."""
    padded, (h, w) = _pad_to_multiple(img, getattr(model, "size_multiple", 32))
    return model.predict(padded)[..., :h, :w].float()


def _slide(model: nn.Module, img: Tensor, window: tuple[int, int], stride: tuple[int, int],
           batch_size: int) -> Tensor:
    """Float logits at the image's size from overlapping windows (batched), averaged where they overlap."""
    return sliding_window_mean(lambda crops: _whole(model, crops), img, window, stride, batch_size)


@torch.no_grad()
def whole_inference(model: nn.Module, img: Tensor, out_size: tuple[int, int]) -> Tensor:
    """The model at the image's size (padded to the encoder's multiple), logits upsampled to `out_size`."""
    return _upsample(_whole(model, img), out_size)


@torch.no_grad()
def slide_inference(model: nn.Module, img: Tensor, out_size: tuple[int, int], window: tuple[int, int],
                    stride: tuple[int, int], batch_size: int = 4) -> Tensor:
    """Overlapping windows (batched), logits averaged where windows overlap, then upsampled to `out_size`."""
    return _upsample(_slide(model, img, window, stride, batch_size), out_size)


def _infer_once(model: nn.Module, img: Tensor, mode: str, window, stride, batch_size: int) -> Tensor:
    if mode == "slide":
        return _slide(model, img, tuple(window), tuple(stride), batch_size)
    if mode != "whole":
        raise ValueError(f"inference mode {mode!r} is not 'whole' or 'slide'")
    return _whole(model, img)


@torch.no_grad()
def input_logits(model: nn.Module, img: Tensor, mode: str = "whole", window=(512, 512), stride=(341, 341),
                 batch_size: int = 4, flip: bool = False) -> Tensor:
    """Float logits at the image's (network input) size; `flip` averages with the mirrored image's (mirrored
    back), as mmseg's TTA."""
    logits = _infer_once(model, img, mode, window, stride, batch_size)
    if flip:
        logits = (logits + _infer_once(model, img.flip(-1), mode, window, stride, batch_size).flip(-1)) / 2
    return logits


@torch.no_grad()
def infer(model: nn.Module, img: Tensor, out_size: tuple[int, int], mode: str = "whole",
          window=(512, 512), stride=(341, 341), batch_size: int = 4, flip: bool = False) -> Tensor:
    """Full-resolution logits (4·C bytes per output pixel: for small outputs; `infer_labels` for any size)."""
    return _upsample(input_logits(model, img, mode, window, stride, batch_size, flip), out_size)


@torch.no_grad()
def infer_labels(model: nn.Module, img: Tensor, out_size: tuple[int, int], mode: str = "whole",
                 window=(512, 512), stride=(341, 341), batch_size: int = 4, flip: bool = False) -> Tensor:
    """B×H×W class ids at `out_size` (uint8 up to 256 classes), in memory bounded by the network input and
    `BAND_BYTES`, never by the output size."""
    return upsampled_argmax(input_logits(model, img, mode, window, stride, batch_size, flip), out_size)


def _source_rows(size_in: int, size_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per output row: the two source rows and their weights, as PyTorch's bilinear kernel computes them
    (align_corners=False: src = (dst + 0.5)·in/out − 0.5, clamped at 0; float32 arithmetic)."""
    scale = torch.tensor(size_in, dtype=torch.float32) / size_out
    src = ((torch.arange(size_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    top = src.long()
    low = (src - top).clamp(0, 1)
    bottom = top + (top < size_in - 1).long()
    return top.to(device), bottom.to(device), (1 - low).to(device), low.to(device)


def upsampled_argmax(logits: Tensor, out_size: tuple[int, int], band_bytes: int = BAND_BYTES) -> Tensor:
    """`_upsample(logits, out_size).argmax(1)` a band of output rows at a time: the width pass on the band's two
    source rows, then the row blend, so the full-resolution logits never exist."""
    b, c, h, _ = logits.shape
    out_h, out_w = out_size
    rows = max(1, band_bytes // (3 * 4 * b * c * out_w))  # two width-resized row sets and their blend
    top, bottom, w_top, w_bottom = _source_rows(h, out_h, logits.device)
    labels = torch.empty((b, out_h, out_w), dtype=torch.uint8 if c <= 256 else torch.int64, device=logits.device)
    for r0 in range(0, out_h, rows):
        band = slice(r0, min(out_h, r0 + rows))
        n = band.stop - band.start
        upper = _upsample(logits[:, :, top[band]], (n, out_w))  # same height: only the width is interpolated
        lower = _upsample(logits[:, :, bottom[band]], (n, out_w))
        blend = w_top[band].view(1, 1, n, 1) * upper + w_bottom[band].view(1, 1, n, 1) * lower
        labels[:, band] = blend.argmax(1)
    return labels
