"""DeepLab-V2 classifier: a sum of dilated 3×3 convs straight to class logits (the UDA literature's 'dlv2red'
uses dilations (6, 12); the full ASPP of the paper uses (6, 12, 18, 24))."""

from __future__ import annotations

from torch import Tensor, nn


class DeepLabV2Head(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dilations=(6, 12), output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = output_stride
        self.aspp = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d) for d in dilations)
        for conv in self.aspp:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[Tensor], return_feature: bool = False):
        x = feats[-1]
        logits = sum(conv(x) for conv in self.aspp)
        return (logits, x) if return_feature else logits
