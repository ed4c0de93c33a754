"""A tiny Segmentor that follows the models contract (docs/architecture.md), for the UDA tests on 2 CPU cores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyEncoder(nn.Module):
    def __init__(self, channels=(8, 16)) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, stride=4, padding=1), nn.BatchNorm2d(channels[0]),
                                    nn.ReLU(), nn.Dropout(0.1))
        self.stage2 = nn.Sequential(nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1),
                                    nn.BatchNorm2d(channels[1]), nn.ReLU())

    def forward(self, x):
        f1 = self.stage1(x)
        return [f1, self.stage2(f1)]


class TinyHead(nn.Module):
    def __init__(self, channels, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(width * len(channels), width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.dropout = nn.Dropout2d(0.1)
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats, return_feature=False):
        size = feats[0].shape[-2:]
        x = torch.cat([F.interpolate(e(f), size=size, mode="bilinear", align_corners=False)
                       for e, f in zip(self.embed, feats)], 1)
        x = self.fuse(x)
        logits = self.cls(self.dropout(x))
        return (logits, x) if return_feature else logits


class TinySegmentor(nn.Module):
    def __init__(self, num_classes: int = 19, channels=(8, 16)) -> None:
        super().__init__()
        self.encoder = TinyEncoder(channels)
        self.decode_head = TinyHead(channels, num_classes)
        self.num_classes = num_classes
        self.feature_channels = list(channels)
        self.feature_strides = [4, 8]
        self.output_stride = 4

    def encode(self, x):
        return self.encoder(x)

    def decode(self, feats, return_feature=False):
        return self.decode_head(feats, return_feature)

    def forward(self, x):
        return self.decode(self.encode(x))

    def encode_context(self, x):
        return self.encode(x)

    def encoder_input_size(self, crop_hw):
        return tuple(crop_hw)

    def predict(self, x):
        return F.interpolate(self.forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def make_batch(seed: int = 0, b: int = 2, h: int = 64, w: int = 64, num_classes: int = 19) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_classes, (b, h // 8, w // 8), generator=g)
    label = F.interpolate(label[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    label[:, :4] = 255
    return {"src_img": torch.randn(b, 3, h, w, generator=g), "src_label": label,
            "tgt_img": torch.randn(b, 3, h, w, generator=g)}


def test_tiny_segmentor_follows_the_contract():
    model = TinySegmentor()
    x = torch.randn(2, 3, 64, 96)
    feats = model.encode(x)
    assert [f.shape[1] for f in feats] == model.feature_channels
    assert [64 // f.shape[2] for f in feats] == model.feature_strides
    assert model.decode(feats).shape == (2, 19, 16, 24)
    assert model.predict(x).shape == (2, 19, 64, 96)
