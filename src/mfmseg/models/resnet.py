"""Dilated ResNet-V1c (deep stem) with exactly mmcv's layer names, so that mmcv's `resnet{18,50,101}_v1c`
ImageNet checkpoints load without renaming. Output stride 8: strides (1,2,1,1), dilations (1,1,2,4), with
mmseg's `contract_dilation` (the first block of a dilated stage uses half the dilation).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mfmseg.models.batchnorm import checkpoint_frozen_bn
from mfmseg.models.encoder import FeatureInfo, load_imagenet_file

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """mmcv 'pytorch' style: the stride sits on the 3×3 conv."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetV1c(nn.Module):
    """Returns the stages in `out_indices` (0 = layer1): [layer4] for DeepLab-V2, [layer1, layer4] for V3+.
    The `models.encoder.Encoder` contract: with the dilated layout the stages are at strides 4/8/8/8."""

    def __init__(self, depth: int = 101, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                 out_indices: tuple[int, ...] = (3,)) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth {depth} not in {sorted(DEPTHS)}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (n, stride, dilation) in enumerate(zip(blocks, strides, dilations)):
            planes = 64 * 2**i
            layer, cin = self._make_layer(block, cin, planes, n, stride, dilation)
            self.add_module(f"layer{i + 1}", layer)
        self.name = f"resnet{depth}"
        stage_strides = [4 * math.prod(strides[:i + 1]) for i in range(4)]  # the stem and max-pool downsample by 4
        self.feature_info = [FeatureInfo(64 * 2**i * block.expansion, stage_strides[i]) for i in self.out_indices]
        self.size_multiple = stage_strides[-1]
        self.grad_checkpointing = False

    @staticmethod
    def _make_layer(block, cin: int, planes: int, n: int, stride: int, dilation: int):
        cout = planes * block.expansion
        downsample = None
        if stride != 1 or cin != cout:
            downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        first_dilation = dilation // 2 if dilation > 1 else 1  # contract_dilation
        layers = [block(cin, planes, stride, first_dilation, downsample)]
        layers += [block(cout, planes, 1, dilation, None) for _ in range(1, n)]
        return nn.Sequential(*layers), cout

    def set_grad_checkpointing(self, enabled: bool) -> None:
        self.grad_checkpointing = enabled

    def convert_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """mmcv's `resnet*_v1c` files use our names already; their ImageNet classifier `fc.*` is dropped."""
        return {k: v for k, v in sd.items() if not k.startswith("fc.")}

    def load_imagenet(self, source: str) -> None:
        """mmcv's `resnet{18,50,101}_v1c` ImageNet checkpoint (or any file with these keys)."""
        load_imagenet_file(self, source)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            layer = getattr(self, name)
            if self.grad_checkpointing and self.training:
                x = checkpoint_frozen_bn(layer, x)
            else:
                x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
