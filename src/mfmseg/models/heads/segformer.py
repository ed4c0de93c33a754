"""SegFormer's all-MLP head: per level a linear embedding, upsample to stride 4, concat, 1×1 fuse (+BN+ReLU),
dropout, 1×1 classifier (embed 256 for B0/B1, 768 for B2–B5)."""

from __future__ import annotations

from torch import Tensor, nn

from mfmseg.models.heads.daformer import conv_bn_relu, daformer_head_from_mmseg, embed_levels


class SegFormerHead(nn.Module):
    name = "segformer"  # shown by `mfmseg models`
    output_stride = 4
    convert_state_dict = staticmethod(daformer_head_from_mmseg)  # the embeddings are renamed as DAFormer's

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 768, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_layers = nn.ModuleList(nn.Linear(c, channels) for c in in_channels)
        self.fuse_layer = conv_bn_relu(channels * len(in_channels), channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor], return_feature: bool = False):
        feature = self.fuse_layer(embed_levels(feats, self.embed_layers))
        logits = self.conv_seg(self.dropout(feature))
        return (logits, feature) if return_feature else logits
