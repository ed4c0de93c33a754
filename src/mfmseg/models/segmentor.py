"""Segmentor = encoder + decode head, with the explicit split that UDA methods need.

`encode` returns exactly the feature levels the head reads; `decode` accepts any list of that shape, which is how
MFM classifies *rebuilt* features with the same decoder, and how FD compares encoder features.
`models.hrda.HRDASegmentor` keeps this contract with multi-resolution training features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.errors import UserError
from mfmseg.models.encoder import Encoder


class Segmentor(nn.Module):
    """`feature_channels`, `feature_strides` and `size_multiple` are read from the encoder (`models.encoder`):
    the UDA step, the MFM Rebuilder and HRDA size themselves from these attributes."""

    def __init__(self, encoder: Encoder, decode_head: nn.Module, *, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head
        self.num_classes = num_classes
        self.feature_channels = [f.channels for f in encoder.feature_info]
        self.feature_strides = [f.stride for f in encoder.feature_info]
        self.output_stride = int(decode_head.output_stride)
        self.size_multiple = int(encoder.size_multiple)

    def _check_input(self, x: Tensor) -> None:
        if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            dtype = getattr(x, "dtype", None)
            raise UserError(f"expected a float B×3×H×W image batch, got shape {shape} dtype {dtype}")
        if x.shape[1] != 3:
            raise UserError(f"expected 3 input channels (RGB), got {x.shape[1]}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise UserError(f"input size {h}×{w} is not divisible by {self.size_multiple}: crop or pad it "
                            f"(inference pads automatically with sliding windows)")

    def encode(self, x: Tensor) -> list[Tensor]:
        self._check_input(x)
        return list(self.encoder(x))

    def decode(self, feats: list[Tensor], return_feature: bool = False):
        return self.decode_head(list(feats), return_feature=return_feature)

    def forward(self, x: Tensor) -> Tensor:
        """Inference logits at output stride (what teachers and predictions use; HRDA's differs from training)."""
        return self.decode(self.encode(x))

    def encode_context(self, x: Tensor) -> list[Tensor]:
        """The single-scale features that the ImageNet feature distance compares: here all of `encode`."""
        return self.encode(x)

    def encoder_input_size(self, crop_hw) -> tuple[int, int]:
        """The size the encoder sees for a training crop (HRDA halves it): sizes the MFM Rebuilder."""
        return int(crop_hw[0]), int(crop_hw[1])

    def predict(self, x: Tensor) -> Tensor:
        """Logits at the input's size (bilinear, align_corners=False)."""
        return F.interpolate(self(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder activations in backward: trades ~30 % more compute for much less memory."""
        self.encoder.set_grad_checkpointing(enabled)
