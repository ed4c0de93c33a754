"""DeepLab-V3+ head as mmseg's `DepthwiseSeparableASPPHead` (the paper's cross-architecture R101 DLv3+ row).

Reads [layer1, layer4]: an image-pool branch plus a depthwise-separable ASPP (dilation 1 is a plain 1×1 conv) on
layer4, a 3×3 bottleneck, then upsampled to layer1's stride 4 and fused with a 48-channel projection of layer1 by
two depthwise-separable 3×3 convs; Dropout2d(0.1) and a 1×1 classifier. Logits at stride 4.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.models.heads.daformer import SeparableASPP, conv_bn_relu, mmcv_conv_module


def separable_conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(cin, cin, 3, dilation, groups=cin), conv_bn_relu(cin, cout, 1))


def dlv3plus_head_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmseg `DepthwiseSeparableASPPHead` keys (image_pool.1, aspp_modules, bottleneck, c1_bottleneck,
    sep_bottleneck, conv_seg) -> ours (the ASPP branches and bottleneck live in `aspp`)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^aspp_modules\.", "aspp.branches.", key)
        key = re.sub(r"^bottleneck\.", "aspp.bottleneck.", key)
        out[mmcv_conv_module(key)] = value
    return out


class DeepLabV3PlusHead(nn.Module):
    name = "deeplabv3plus"  # shown by `mfmseg models`
    output_stride = 4
    convert_state_dict = staticmethod(dlv3plus_head_from_mmseg)  # mmseg's DeepLab-V3+ checkpoints

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, c1_channels: int = 48,
                 dilations=(1, 12, 24, 36), dropout: float = 0.1) -> None:
        super().__init__()
        c1_in, c_in = in_channels
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(c_in, channels, 1))
        # the pooled branch is one more input to the bottleneck: build the ASPP for len(dilations) + 1 inputs
        self.aspp = SeparableASPP(c_in, channels, dilations, extra_inputs=1)
        self.c1_bottleneck = conv_bn_relu(c1_in, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(separable_conv(channels + c1_channels, channels),
                                            separable_conv(channels, channels))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor], return_feature: bool = False):
        c1, x = feats
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = self.aspp(x, extra=[pooled])
        out = F.interpolate(out, size=c1.shape[-2:], mode="bilinear", align_corners=False)
        feature = self.sep_bottleneck(torch.cat([out, self.c1_bottleneck(c1)], dim=1))
        logits = self.conv_seg(self.dropout(feature))
        return (logits, feature) if return_feature else logits
