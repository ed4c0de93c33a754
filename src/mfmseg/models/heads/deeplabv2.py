"""DeepLab-V2 classifier: a sum of dilated 3×3 convs straight to class logits (the UDA literature's 'dlv2red'
uses dilations (6, 12); the full ASPP of the paper uses (6, 12, 18, 24))."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor, nn


def dlv2_head_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """lhoyer/DAFormer `DLV2Head` keys (`aspp_modules.<i>.conv.*`, ConvModule without norm) -> ours (`aspp.<i>.*`)."""
    return {re.sub(r"^aspp_modules\.(\d+)\.conv\.", r"aspp.\1.", k): v for k, v in sd.items()}


class DeepLabV2Head(nn.Module):
    """Reads the last level only; `in_channels` lists every level, as for the other heads."""

    name = "deeplabv2"  # shown by `mfmseg models`
    convert_state_dict = staticmethod(dlv2_head_from_mmseg)  # released DACS checkpoints

    def __init__(self, in_channels: Sequence[int], num_classes: int, dilations=(6, 12),
                 output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = output_stride
        self.aspp = nn.ModuleList(nn.Conv2d(in_channels[-1], num_classes, 3, padding=d, dilation=d)
                                  for d in dilations)
        for conv in self.aspp:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[Tensor], return_feature: bool = False):
        x = feats[-1]
        logits = sum(conv(x) for conv in self.aspp)
        return (logits, x) if return_feature else logits
