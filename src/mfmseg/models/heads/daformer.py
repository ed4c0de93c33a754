"""DAFormer's context-aware fusion head (docs/method.md §4).

Per level a linear embedding to 256 channels, all upsampled to stride 4 and concatenated, fused by an ASPP of
depthwise-separable 3×3 convs (dilations 6/12/18; dilation 1 is a plain 1×1 conv) with BN+ReLU after depthwise
and pointwise parts, a 3×3 bottleneck 1024→256 (+BN+ReLU), Dropout2d(0.1) and a 1×1 classifier.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def embed_levels(feats: list[Tensor], embed_layers: nn.ModuleList) -> Tensor:
    """Per-level linear embedding (on every position), upsampled to the first level's size, concatenated."""
    size = feats[0].shape[-2:]
    embedded = []
    for x, embed in zip(feats, embed_layers):
        e = embed(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:])
        if e.shape[-2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
        embedded.append(e)
    return torch.cat(embedded, dim=1)


class SeparableASPP(nn.Module):
    """`extra_inputs` branches computed outside (DeepLab-V3+'s image pool) are concatenated first."""

    def __init__(self, cin: int, cout: int, dilations=(1, 6, 12, 18), extra_inputs: int = 0) -> None:
        super().__init__()
        branches = []
        for d in dilations:
            if d == 1:
                branches.append(conv_bn_relu(cin, cout, 1))
            else:
                branches.append(nn.Sequential(conv_bn_relu(cin, cin, 3, d, groups=cin), conv_bn_relu(cin, cout, 1)))
        self.branches = nn.ModuleList(branches)
        self.bottleneck = conv_bn_relu(cout * (len(dilations) + extra_inputs), cout, 3)

    def forward(self, x: Tensor, extra: list[Tensor] | None = None) -> Tensor:
        return self.bottleneck(torch.cat([*(extra or []), *(b(x) for b in self.branches)], dim=1))


def mmcv_conv_module(key: str) -> str:
    """mmcv ConvModule (`conv`, `bn`) / DepthwiseSeparableConvModule (`depthwise_conv`, `pointwise_conv`) names ->
    our nn.Sequential indices (conv 0, bn 1; depthwise 0, pointwise 1)."""
    key = key.replace(".depthwise_conv.", ".0.").replace(".pointwise_conv.", ".1.")
    key = re.sub(r"\.conv\.(weight|bias)$", r".0.\1", key)
    return re.sub(r"\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".1.\1", key)


def daformer_head_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """lhoyer/DAFormer head keys (ConvModule conv/bn, DepthwiseSeparableConvModule) -> ours."""
    out = {}
    for key, value in sd.items():
        k = re.sub(r"^embed_layers\.(\d+)\.proj\.", r"embed_layers.\1.", key)
        k = re.sub(r"^fuse_layer\.aspp_modules\.0\.conv\.", "fuse_layer.branches.0.0.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.0\.bn\.", "fuse_layer.branches.0.1.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.depthwise_conv\.conv\.", r"fuse_layer.branches.\1.0.0.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.depthwise_conv\.bn\.", r"fuse_layer.branches.\1.0.1.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.pointwise_conv\.conv\.", r"fuse_layer.branches.\1.1.0.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.pointwise_conv\.bn\.", r"fuse_layer.branches.\1.1.1.", k)
        k = re.sub(r"^fuse_layer\.bottleneck\.conv\.", "fuse_layer.bottleneck.0.", k)
        k = re.sub(r"^fuse_layer\.bottleneck\.bn\.", "fuse_layer.bottleneck.1.", k)
        out[k] = value
    return out


class DAFormerHead(nn.Module):
    name = "daformer"  # shown by `mfmseg models`
    output_stride = 4
    convert_state_dict = staticmethod(daformer_head_from_mmseg)  # released DAFormer/HRDA/MIC checkpoints

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_layers = nn.ModuleList(nn.Linear(c, channels) for c in in_channels)
        self.fuse_layer = SeparableASPP(channels * len(in_channels), channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor], return_feature: bool = False):
        feature = self.fuse_layer(embed_levels(feats, self.embed_layers))
        logits = self.conv_seg(self.dropout(feature))
        return (logits, feature) if return_feature else logits
