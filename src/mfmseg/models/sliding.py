"""One sliding-window mean, shared by `engine.evaluation.inference` (outer windows over the network input) and HRDA's
detail scale (`HRDASegmentor.slide_detail`): both run a function on overlapping crops and average the outputs
where the crops overlap. One copy, so the window placement and the averaging cannot drift apart."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of `window`-long windows every `stride` covering [0, size); the last one ends flush with `size`."""
    window = min(window, size)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def sliding_window_mean(run: Callable[[Tensor], Tensor], img: Tensor, window: Sequence[int],
                        stride: Sequence[int], batch_size: int | None = None, out_stride: int = 1) -> Tensor:
    """`run` on overlapping `window` crops of `img` (B×C×H×W; windows clipped to the image), `batch_size` windows
    per call (None: all at once), averaged where they overlap. `run` maps an N·B×C×h×w batch of crops to
    outputs at `out_stride` (h/out_stride × w/out_stride); the result is B×K×(H/out_stride)×(W/out_stride),
    summed in float32 whatever `run` returns (AMP)."""
    b, _, h, w = img.shape
    wh, ww = min(window[0], h), min(window[1], w)
    boxes = [(y, x) for y in window_starts(h, wh, stride[0]) for x in window_starts(w, ww, stride[1])]
    batch, s = batch_size or len(boxes), out_stride
    total = count = None
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        out = run(torch.cat([img[:, :, y:y + wh, x:x + ww] for y, x in chunk]))
        if total is None:
            total = out.new_zeros((b, out.shape[1], h // s, w // s), dtype=torch.float32)
            count = out.new_zeros((1, 1, h // s, w // s), dtype=torch.float32)
        for k, (y, x) in enumerate(chunk):
            total[:, :, y // s:(y + wh) // s, x // s:(x + ww) // s] += out[k * b:(k + 1) * b]
            count[:, :, y // s:(y + wh) // s, x // s:(x + ww) // s] += 1
    return total / count
