"""Large inputs: labels at any output size in bounded memory, equal to the argmax of full-resolution logits.

Memory is measured, not timed: the largest tensor any torch op creates while predicting a wide image (a
TorchDispatchMode sees every op's outputs) and the peak of numpy's allocations (tracemalloc traces them).
"""

import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from mfmseg.config import Config
from mfmseg.engine.evaluation.inference import BAND_BYTES, infer, infer_labels, upsampled_argmax
from mfmseg.engine.evaluation.predict import predict_images
from mfmseg.models.zoo import build_model


@pytest.mark.parametrize("shape", [(16, 1024, 64, 4096), (40, 50, 100, 125), (32, 32, 2, 2), (7, 13, 50, 3),
                                   (64, 96, 33, 200)])
def test_banded_labels_are_the_argmax_of_full_resolution_logits(shape):
    h, w, out_h, out_w = shape
    logits = torch.randn(2, 19, h, w, generator=torch.Generator().manual_seed(0))
    full = torch.nn.functional.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
    for band_bytes in (1, BAND_BYTES):  # one row per band, and the default
        labels = upsampled_argmax(logits, (out_h, out_w), band_bytes)
        assert labels.dtype == torch.uint8 and torch.equal(labels.long(), full.argmax(1))


def _tiny_network() -> torch.nn.Module:
    cfg = Config()
    cfg.model.name, cfg.model.decoder_channels = "daformer_mitb0", 16
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


@pytest.mark.parametrize("mode,flip", [("whole", False), ("slide", True)])
def test_a_real_network_predicts_the_same_labels_as_before(mode, flip):
    """What evaluation used to compute (argmax of `infer`'s full logits) is what `infer_labels` gives: same mIoU."""
    model = _tiny_network()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    args = (model, x, (128, 192), mode, (64, 64), (32, 32), 2, flip)
    assert torch.equal(infer_labels(*args).long(), infer(*args).argmax(1))


class _LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("fmt", ["color", "overlay"])
def test_predicting_a_wide_image_keeps_memory_bounded(tmp_path, fmt):
    height, width = 128, 8192  # 1 Mpixel: full-resolution logits would be 19 × 4 bytes × 1 M = 80 MB
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    cfg = Config()
    cfg.data.val.resize, cfg.data.val.keep_ratio = [1024, 512], True  # the network sees 16×1024
    cfg.eval.window = [64, 64]
    model = _tiny_network()
    spy = _LargestTensor()
    tracemalloc.start()
    try:
        with spy:
            out = predict_images(model, cfg, [str(tmp_path / "wide.png")], tmp_path / "out", fmt)
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.asarray(Image.open(out[0])).shape == (height, width, 3)
    full_logits = 19 * 4 * height * width
    assert spy.largest <= BAND_BYTES < full_logits / 16, spy.largest
    assert numpy_peak <= 16 * height * width, numpy_peak  # image, labels, colours: bytes per pixel, not per class
