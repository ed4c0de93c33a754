"""Tiny real zoo networks and batches for the UDA tests (2 CPU cores): the step is tested on the networks it trains,
not on a duck-typed copy of their contract."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mfmseg.config import ModelConfig
from mfmseg.models.segmentor import SegmentationModel, Segmentor
from mfmseg.models.zoo import build_model


def tiny_student(name: str = "daformer_mitb0", seed: int = 0) -> Segmentor:
    """A zoo network with a 16-channel decoder (MiT-B0: 4 levels at strides 4..32; EfficientNet-Lite0 has BN)."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, decoder_channels=16))


def make_batch(seed: int = 0, b: int = 2, h: int = 64, w: int = 64, num_classes: int = 19) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_classes, (b, h // 8, w // 8), generator=g)
    label = F.interpolate(label[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    label[:, :4] = 255
    return {"src_img": torch.randn(b, 3, h, w, generator=g), "src_label": label,
            "tgt_img": torch.randn(b, 3, h, w, generator=g)}


def test_the_zoo_networks_follow_the_segmentation_model_protocol():
    for name in ("daformer_mitb0", "daformer_efflite0"):
        model = tiny_student(name)
        assert isinstance(model, SegmentationModel)
        x = torch.randn(2, 3, 64, 96)
        feats = model.encode(x)
        assert [f.shape[1] for f in feats] == model.feature_channels
        assert [64 // f.shape[2] for f in feats] == model.feature_strides
        assert model.decode(feats).shape == (2, 19, 16, 24)
        assert model.predict(x).shape == (2, 19, 64, 96)
