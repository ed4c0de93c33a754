"""HRDA: multi-resolution training fused by a learned scale attention (Hoyer et al., ECCV 2022; docs/method.md §3).

One encoder and one segmentation head see every image at two scales:

- context: the whole training crop (e.g. 1024²) resized by 0.5 (512²): large field of view, coarse detail;
- detail: a random `hr_crop` window (512²) of the crop at full scale, its corners multiples of `crop_divisible`.

A light scale-attention head (a DAFormer head with narrow embeddings and a 1×1 conv fusion instead of the ASPP)
reads the context features and predicts, per pixel and class, how much to trust the detail prediction:

    fused = up2(att) · detail_pasted + up2((1 − att) · context_logits)

`detail_pasted` is the detail prediction placed at its window in a zero map at full-scale output stride; in
training the attention is zeroed outside the window, so there the fused map *is* the context prediction.
The training loss (`HRDASegmentor.loss`) is (1 − w)·CE(fused) + w·CE(detail on its window), w = 0.1.

At inference (`forward`) the detail scale covers the whole input with overlapping `hr_crop` windows (stride
`detail_stride`), batched through the encoder; their logits are pasted and averaged, and the attention is used
everywhere. Larger images are tiled by the outer sliding window of `engine.evaluation.inference` (`eval.mode=slide`).

The contract the UDA step relies on is `models.segmentor.SegmentationModel`, shared with the plain `Segmentor`:
`encode(x)` → training features (here `MultiResFeatures`), `decode(features)` → training output (here `HRDALogits`),
`loss(output, labels, weight)`, `map_features` (both scales, context first), `context_features`, `output_logits`
(the fused map), `forward(x)` → inference logits at output stride, `encode_context(x)`, `encoder_input_size`.

Unlike the reference, the detail window is a value (`MultiResFeatures.box`) passed from `encode` to `decode`
and the loss, never state kept on a class or module.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.errors import UserError
from mfmseg.models.heads.daformer import conv_bn_relu, embed_levels, mmcv_conv_module
from mfmseg.models.segmentor import FeatureList, Segmentor, weighted_ce
from mfmseg.models.sliding import sliding_window_mean

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2) in input pixels, end-exclusive


class MultiResFeatures(NamedTuple):
    """Training features of one batch: both scales and where the detail window lies in the input."""
    context: list[Tensor]  # encoder levels of the input resized by 0.5
    detail: list[Tensor]  # encoder levels of the full-scale window `box`
    box: Box


class HRDALogits(NamedTuple):
    """Training output: what the HRDA loss needs (the fused map, the detail map and its window)."""
    fused: Tensor  # B×C×(H/os)×(W/os): the input at output stride os
    detail: Tensor  # B×C×(h/os)×(w/os): the detail window at output stride
    box: Box  # the detail window in input pixels
    detail_weight: float  # w in (1 − w)·CE(fused) + w·CE(detail)


def scale_attention_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HRDA's attention head (a DAFormer head with a `conv` fusion: mmcv ConvModule `fuse_layer.conv/bn`) -> ours."""
    return {mmcv_conv_module(re.sub(r"^embed_layers\.(\d+)\.proj\.", r"embed_layers.\1.", k)): v
            for k, v in sd.items()}


class ScaleAttentionHead(nn.Module):
    """DAFormer head variant: per-level linear embeddings, concatenated at stride 4, a 1×1 conv + BN + ReLU fusion,
    Dropout2d and a class-wise 1×1 classifier. Returns raw scores; the sigmoid is applied by `HRDASegmentor`."""

    output_stride = 4
    convert_state_dict = staticmethod(scale_attention_from_mmseg)  # released HRDA/MIC checkpoints

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_layers = nn.ModuleList(nn.Linear(c, channels) for c in in_channels)
        self.fuse_layer = conv_bn_relu(channels * len(in_channels), channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.conv_seg(self.dropout(self.fuse_layer(embed_levels(feats, self.embed_layers))))


def draw_box(height: int, width: int, crop: Sequence[int], divisible: int) -> Box:
    """A random `crop` window inside height×width, corners multiples of `divisible` (torch's global RNG, which
    the trainer seeds per iteration). Every aligned position is possible, the last one included."""
    y1 = int(torch.randint(0, (height - crop[0]) // divisible + 1, ())) * divisible
    x1 = int(torch.randint(0, (width - crop[1]) // divisible + 1, ())) * divisible
    return y1, y1 + crop[0], x1, x1 + crop[1]


class HRDASegmentor(Segmentor):
    """A base Segmentor's encoder and head (`encoder.*`, `decode_head.*`) plus `scale_attention.*`."""

    def __init__(self, base: Segmentor, *, hr_crop: Sequence[int] = (512, 512), attention_embed_dim: int = 256,
                 hr_loss_weight: float = 0.1, detail_stride: Sequence[int] = (256, 256),
                 crop_divisible: int = 8) -> None:
        super().__init__(base.encoder, base.decode_head, num_classes=base.num_classes)
        self.size_multiple = 2 * base.size_multiple  # inputs must halve to the encoder's: the context sees 0.5
        self.scale_attention = ScaleAttentionHead(base.feature_channels, base.num_classes, attention_embed_dim)
        self.hr_crop = (int(hr_crop[0]), int(hr_crop[1]))
        self.detail_stride = (int(detail_stride[0]), int(detail_stride[1]))
        self.crop_divisible = int(crop_divisible)
        self.hr_loss_weight = float(hr_loss_weight)
        if self.crop_divisible % (2 * self.output_stride):
            raise UserError(f"model.hrda.crop_divisible={crop_divisible} must be a multiple of "
                            f"{2 * self.output_stride} (2 × the head's output stride) for an exact fusion")
        if any(c % base.size_multiple for c in self.hr_crop):
            raise UserError(f"model.hrda.hr_crop={list(self.hr_crop)} must be a multiple of the encoder's "
                            f"{base.size_multiple}")

    # ---- training: two scales, one random detail window --------------------------------------------------------
    def encode(self, x: Tensor) -> MultiResFeatures:
        """Context features of x at 0.5 and detail features of a random full-scale `hr_crop` window of x."""
        self._check_input(x)
        h, w = x.shape[-2:]
        if h < self.hr_crop[0] or w < self.hr_crop[1]:
            raise UserError(f"HRDA training input {h}×{w} is smaller than model.hrda.hr_crop={list(self.hr_crop)}")
        box = draw_box(h, w, self.hr_crop, self.crop_divisible)
        detail = self._encode(x[:, :, box[0]:box[1], box[2]:box[3]])
        return MultiResFeatures(self.encode_context(x), detail, box)

    def decode(self, feats: MultiResFeatures) -> HRDALogits:
        """Both scales through the segmentation head, fused by the attention masked to the detail window."""
        if not isinstance(feats, MultiResFeatures):
            raise TypeError(f"HRDASegmentor.decode takes MultiResFeatures (from encode), got {type(feats).__name__}")
        context_logits = self.decode_head(feats.context)
        detail_logits = self.decode_head(feats.detail)
        fused = self.fuse(context_logits, self.attention(feats.context), detail_logits, feats.box)
        return HRDALogits(fused, detail_logits, feats.box, self.hr_loss_weight)

    def loss(self, outputs: HRDALogits, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        """(1 − w)·CE(fused) + w·CE(detail, labels and weight cropped to the detail window), w = `hr_loss_weight`
        (0.1), both reduced as `weighted_ce`."""
        y1, y2, x1, x2 = outputs.box
        crop_weight = weight[:, y1:y2, x1:x2] if weight is not None else None
        w = outputs.detail_weight
        fused = weighted_ce(outputs.fused, labels, weight)
        return (1 - w) * fused + w * weighted_ce(outputs.detail, labels[:, y1:y2, x1:x2], crop_weight)

    def context_features(self, feats: MultiResFeatures) -> list[Tensor]:
        return feats.context

    def map_features(self, feats: MultiResFeatures, fn: Callable[[FeatureList], FeatureList]) -> MultiResFeatures:
        """`fn` on the context, then on the detail features (e.g. MFM: independent token masks per scale)."""
        context = fn(feats.context)
        return feats._replace(context=context, detail=fn(feats.detail))

    def output_logits(self, outputs: HRDALogits) -> Tensor:
        return outputs.fused

    # ---- inference: detail everywhere by overlapping windows ---------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Inference logits at output stride: context of the whole input, detail by sliding windows."""
        self._check_input(x)
        context = self.encode_context(x)
        return self.fuse(self.decode_head(context), self.attention(context), self.slide_detail(x), None)

    def slide_detail(self, x: Tensor) -> Tensor:
        """Full-scale logits of x at output stride from overlapping `hr_crop` windows, all windows in one
        encoder batch; overlapping logits are averaged."""
        run = lambda crops: self.decode_head(self._encode(crops))  # noqa: E731
        return sliding_window_mean(run, x, self.hr_crop, self.detail_stride, out_stride=self.output_stride)

    # ---- shared pieces ----------------------------------------------------------------------------------------
    def attention(self, context: list[Tensor]) -> Tensor:
        """Class-wise scale attention in [0, 1] at the context's output stride."""
        return torch.sigmoid(self.scale_attention(context))

    def fuse(self, context_logits: Tensor, att: Tensor, detail_logits: Tensor, box: Box | None) -> Tensor:
        """up2(att)·detail + up2((1 − att)·context). With a `box` (training) the detail logits cover only that
        window of the input: they are pasted into zeros and the attention is zeroed outside the window."""
        b, c, h, w = context_logits.shape
        if box is not None:
            s = 2 * self.output_stride  # input pixels per context logit
            y1, y2, x1, x2 = (v // s for v in box)
            inside = att.new_zeros((b, 1, h, w))
            inside[:, :, y1:y2, x1:x2] = 1
            att = att * inside
            s = self.output_stride
            pasted = detail_logits.new_zeros((b, c, 2 * h, 2 * w))
            pasted[:, :, box[0] // s:box[1] // s, box[2] // s:box[3] // s] = detail_logits
            detail_logits = pasted
        up = lambda t: F.interpolate(t, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)  # noqa: E731
        return up(att) * detail_logits + up((1 - att) * context_logits)

    def encode_context(self, x: Tensor) -> list[Tensor]:
        h, w = x.shape[-2:]
        return self._encode(F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", align_corners=False))

    def encoder_input_size(self, crop_hw: Sequence[int]) -> tuple[int, int]:
        """The context input (the crop at 0.5); the detail input is `hr_crop` (the same 512² in the paper)."""
        return int(crop_hw[0]) // 2, int(crop_hw[1]) // 2

    def _encode(self, x: Tensor) -> list[Tensor]:
        return list(self.encoder(x))
