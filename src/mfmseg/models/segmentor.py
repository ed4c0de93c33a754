"""Segmentor = encoder + decode head, with the explicit split that UDA methods need.

`encode` returns exactly the feature levels the head reads; `decode` accepts any list of that shape, which is how
MFM classifies *rebuilt* features with the same decoder, and how FD compares encoder features.
`models.hrda.HRDASegmentor` keeps this contract with multi-resolution training features.

`SegmentationModel` is that contract as a `typing.Protocol`: everything the UDA method may ask of a network. The
network owns its training loss and the shape of its training features, so the method never asks which kind of
network it trains.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.data.labels import IGNORE_INDEX
from mfmseg.errors import UserError
from mfmseg.models.batchnorm import set_bn_eval
from mfmseg.models.encoder import Encoder

FeatureList = list[Tensor]


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (align_corners=False) to `size`; unchanged when already there."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def weighted_ce(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """CE of `logits` (B×C×h×w, upsampled to the label size) against `labels` (B×H×W), times `weight` (B×H×W).

    Reduced as the reference (mmseg 0.x) does: the per-pixel CE (0 on ignored pixels) times the pixel weight,
    averaged over *all* pixels, ignored ones included. `F.cross_entropy(reduction="mean")` would divide by the
    non-ignored count instead, which changes the loss scale whenever a crop has ignore regions.
    """
    logits = resize_logits(logits.float(), tuple(labels.shape[-2:]))
    per_pixel = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX)
    if weight is not None:
        per_pixel = per_pixel * weight.float()
    return per_pixel.mean()


@runtime_checkable
class SegmentationModel(Protocol):
    """What the UDA method (`uda/`) may use of a network. Training features and outputs are opaque values
    (a feature list and logits for `Segmentor`; `MultiResFeatures` and `HRDALogits` for HRDA) that only the
    network's own methods look inside."""

    num_classes: int
    feature_channels: list[int]
    feature_strides: list[int]

    def encode(self, x: Tensor) -> Any:
        """Training features of a training crop (may draw randomness, e.g. HRDA's detail window)."""

    def decode(self, feats: Any) -> Any:
        """Training outputs of features from `encode` (or from `map_features` on them)."""

    def loss(self, outputs: Any, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        """The supervised loss of training outputs against B×H×W labels at the input's size."""

    def predict(self, x: Tensor) -> Tensor:
        """Inference logits at x's size."""

    def __call__(self, x: Tensor) -> Tensor:
        """Inference logits at output stride (teachers' pseudo-labels)."""

    def encode_context(self, x: Tensor) -> FeatureList:
        """The single-scale features of x that the ImageNet feature distance compares."""

    def context_features(self, feats: Any) -> FeatureList:
        """The part of training features that `encode_context` would give."""

    def map_features(self, feats: Any, fn: Callable[[FeatureList], FeatureList]) -> Any:
        """Training features with `fn` applied to every single-scale feature list in them, in a fixed order."""

    def output_logits(self, outputs: Any) -> Tensor:
        """The logits of training outputs for the whole input, at output stride (panels)."""

    def encoder_input_size(self, crop_hw: Sequence[int]) -> tuple[int, int]:
        """The size the encoder sees for a training crop."""


class Segmentor(nn.Module):
    """`feature_channels`, `feature_strides` and `size_multiple` are read from the encoder (`models.encoder`):
    the UDA step, the MFM Rebuilder and HRDA size themselves from these attributes."""

    def __init__(self, encoder: Encoder, decode_head: nn.Module, *, num_classes: int, norm_eval: bool = False
                 ) -> None:
        super().__init__()
        self.encoder = encoder
        self.norm_eval = norm_eval
        self.decode_head = decode_head
        self.num_classes = num_classes
        self.feature_channels = [f.channels for f in encoder.feature_info]
        self.feature_strides = [f.stride for f in encoder.feature_info]
        self.output_stride = int(decode_head.output_stride)
        self.size_multiple = int(encoder.size_multiple)
        self.train(self.training)  # a new module is in train mode: norm_eval applies from the start

    def train(self, mode: bool = True) -> "Segmentor":
        """`norm_eval` (mmsegmentation's name): the encoder's BatchNorms stay in eval mode in every training pass,
        student's and teacher's, so their running statistics stay the pretrained ones and no pass can move them
        toward the target domain: the BatchNorm analogue of a LayerNorm encoder. Affine weights still train."""
        super().train(mode)
        if mode and self.norm_eval:
            set_bn_eval(self.encoder)
        return self

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

    def loss(self, outputs: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        """`weighted_ce` of the logits against labels at the input's size."""
        return weighted_ce(outputs, labels, weight)

    def encode_context(self, x: Tensor) -> list[Tensor]:
        """The single-scale features that the ImageNet feature distance compares: here all of `encode`."""
        return self.encode(x)

    def context_features(self, feats: list[Tensor]) -> list[Tensor]:
        return feats

    def map_features(self, feats: list[Tensor], fn: Callable[[FeatureList], FeatureList]) -> list[Tensor]:
        return fn(feats)

    def output_logits(self, outputs: Tensor) -> Tensor:
        return outputs

    def encoder_input_size(self, crop_hw) -> tuple[int, int]:
        """The size the encoder sees for a training crop (HRDA halves it): sizes the MFM Rebuilder."""
        return int(crop_hw[0]), int(crop_hw[1])

    def predict(self, x: Tensor) -> Tensor:
        """Logits at the input's size (bilinear, align_corners=False)."""
        return F.interpolate(self(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder activations in backward: trades ~30 % more compute for much less memory."""
        self.encoder.set_grad_checkpointing(enabled)
