"""Whole-image and sliding-window inference: logits at the label's full resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.models.hrda import window_starts


def _pad_to_multiple(img: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    h, w = img.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return (F.pad(img, (0, pw, 0, ph)) if ph or pw else img), (h, w)


@torch.no_grad()
def whole_inference(model: nn.Module, img: Tensor, out_size: tuple[int, int]) -> Tensor:
    """The model at the image's size (padded to the encoder's multiple), logits upsampled to `out_size`."""
    padded, (h, w) = _pad_to_multiple(img, getattr(model, "size_multiple", 32))
    logits = model.predict(padded)[..., :h, :w]
    return F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def slide_inference(model: nn.Module, img: Tensor, out_size: tuple[int, int], window: tuple[int, int],
                    stride: tuple[int, int], batch_size: int = 4) -> Tensor:
    """Overlapping windows (batched), logits averaged where windows overlap, then upsampled to `out_size`."""
    b, _, h, w = img.shape
    wh, ww = min(window[0], h), min(window[1], w)
    boxes = [(y, x) for y in window_starts(h, wh, stride[0]) for x in window_starts(w, ww, stride[1])]
    logits = count = None
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        crops = torch.cat([img[:, :, y:y + wh, x:x + ww] for y, x in chunk])
        out = whole_inference(model, crops, (wh, ww))
        if logits is None:
            logits = img.new_zeros((b, out.shape[1], h, w), dtype=torch.float32)
            count = img.new_zeros((1, 1, h, w), dtype=torch.float32)
        for k, (y, x) in enumerate(chunk):
            logits[:, :, y:y + wh, x:x + ww] += out[k * b:(k + 1) * b]
            count[:, :, y:y + wh, x:x + ww] += 1
    logits = logits / count
    return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def _infer_once(model: nn.Module, img: Tensor, out_size: tuple[int, int], mode: str, window, stride,
                batch_size: int) -> Tensor:
    if mode == "slide":
        return slide_inference(model, img, out_size, tuple(window), tuple(stride), batch_size)
    if mode != "whole":
        raise ValueError(f"inference mode {mode!r} is not 'whole' or 'slide'")
    return whole_inference(model, img, out_size)


@torch.no_grad()
def infer(model: nn.Module, img: Tensor, out_size: tuple[int, int], mode: str = "whole",
          window=(512, 512), stride=(341, 341), batch_size: int = 4, flip: bool = False) -> Tensor:
    """Full-resolution logits; `flip` averages with the mirrored image's (mirrored back) logits, as mmseg's TTA."""
    logits = _infer_once(model, img, out_size, mode, window, stride, batch_size)
    if flip:
        mirrored = _infer_once(model, img.flip(-1), out_size, mode, window, stride, batch_size)
        logits = (logits + mirrored.flip(-1)) / 2
    return logits
