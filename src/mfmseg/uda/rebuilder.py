"""The Rebuilder of Masked Feature Modeling (docs/method.md §2): the network; the loss term is `uda/mfm.py`.

The Rebuilder masks ~40 % of a token grid built from the deepest encoder level, lets two ViT blocks infer the
masked tokens from the visible ones, projects the tokens back to every level the decode head reads and swaps
them in where tokens were masked. Training-only: it is dropped at inference.

Unlike the official module (hard-coded to 512 px crops) every size here is derived: the grid from the config,
each level's projector depth from its size at the training crop, the positional embedding for the actual grid;
a projector output that does not match a level (another crop size) is resized bilinearly.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.config import MFMConfig
from mfmseg.models.layer_norm import LayerNorm2d


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """MAE's fixed 2-D sin-cos embedding, (grid_h·grid_w)×dim, tokens in row-major order; the first half of
    the channels encodes the column, the second half the row (MAE's layout)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Standard pre-norm ViT block (qkv bias, GELU MLP, LayerNorm eps 1e-5)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def build_projector(embed_dim: int, out_channels: int, scale: int) -> nn.Sequential:
    """log2(scale) ConvTranspose(k4,s2,p1) stages (embed -> embed/2 -> embed/4 -> embed/4 ...) with
    LayerNorm2d+GELU between stages, a 1×1 conv to the level's channels, LayerNorm2d. The widths scale with the
    embedding as in the official module (512 -> 256 -> 128), so that a small Rebuilder stays small."""
    if scale < 1 or scale & (scale - 1):
        raise ValueError(f"projector scale must be a power of two, got {scale}")
    layers: list[nn.Module] = []
    channels = embed_dim
    for stage in range(int(math.log2(scale))):
        if stage > 0:
            layers += [LayerNorm2d(channels), nn.GELU()]
        nxt = embed_dim // 2 if stage == 0 else embed_dim // 4
        layers.append(nn.ConvTranspose2d(channels, nxt, kernel_size=4, stride=2, padding=1))
        channels = nxt
    layers += [nn.Conv2d(channels, out_channels, kernel_size=1), LayerNorm2d(out_channels)]
    return nn.Sequential(*layers)


def level_scale(level_hw: Sequence[int], grid: int) -> int:
    """The power of two nearest to (longer level side / grid), at least 1: 128/16 -> 8, 64/16 -> 4."""
    ratio = max(level_hw) / grid
    return 2 ** max(0, round(math.log2(ratio))) if ratio > 0 else 1


class Rebuilder(nn.Module):
    """Masks tokens of the deepest level and rebuilds every decoder level's features at masked positions."""

    def __init__(self, in_channels: Sequence[int], level_scales: Sequence[int], embed_dim: int = 512,
                 depth: int = 2, num_heads: int = 16, mlp_ratio: float = 4.0, grid: int = 16,
                 mask_ratio: float = 0.4, rebuild: bool = True) -> None:
        super().__init__()
        if len(in_channels) != len(level_scales) or not in_channels:
            raise ValueError(f"need one scale per level: channels {list(in_channels)}, scales {list(level_scales)}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.in_channels, self.level_scales = list(in_channels), list(level_scales)
        self.grid, self.mask_ratio, self.embed_dim = grid, mask_ratio, embed_dim
        self.rebuild = rebuild
        if not rebuild:  # the "masking without a Rebuilder" control: nothing to learn, masked positions are zero
            return
        self.embed = nn.Linear(in_channels[-1], embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)
        self.projectors = nn.ModuleList(build_projector(embed_dim, c, s) for c, s in zip(in_channels, level_scales))
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE-style: xavier-uniform Linear with zero bias (the embed included), mask token N(0, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def for_segmentor(cls, segmentor: nn.Module, crop_hw: Sequence[int], cfg: MFMConfig) -> "Rebuilder":
        """Level scales from each level's size at the training crop (crop // stride) relative to the grid."""
        sizes = [(int(crop_hw[0]) // s, int(crop_hw[1]) // s) for s in segmentor.feature_strides]
        return cls(segmentor.feature_channels, [level_scale(hw, cfg.grid) for hw in sizes],
                   embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                   grid=cfg.grid, mask_ratio=cfg.mask_ratio, rebuild=cfg.rebuild)

    def draw_mask(self, batch: int, generator: torch.Generator | None = None,
                  token_weights: Tensor | None = None) -> Tensor:
        """B×grid×grid bool, True = masked. Without weights (the paper) a token is kept when U(0,1) > mask_ratio;
        with B×grid×grid `token_weights` exactly round(mask_ratio·grid²) tokens per image are drawn without
        replacement, each with probability proportional to its weight."""
        if token_weights is None:
            return torch.rand((batch, self.grid, self.grid), generator=generator) <= self.mask_ratio
        flat = token_weights.detach().float().cpu().reshape(batch, -1)
        count = round(self.mask_ratio * flat.shape[1])
        mask = torch.zeros_like(flat, dtype=torch.bool)
        if count:
            mask.scatter_(1, torch.multinomial(flat, count, replacement=False, generator=generator), True)
        return mask.reshape(batch, self.grid, self.grid)

    def tokens(self, deepest: Tensor, token_mask: Tensor) -> Tensor:
        """Embed, resize to the grid, mask, add positions, run the blocks: B×D×grid×grid."""
        x = self.embed(deepest.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != (self.grid, self.grid):
            x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        x = x.flatten(2).transpose(1, 2)
        masked = token_mask.flatten(1)[..., None].to(x.device)
        x = torch.where(masked, self.mask_token.to(x.dtype), x)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, self.grid, self.grid)

    def forward(self, feats: Sequence[Tensor], generator: torch.Generator | None = None,
                token_weights: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """(rebuilt features, token_mask B×grid×grid bool, True = masked); visible positions keep `feats`.
        `token_weights` (B×grid×grid): draw the mask by weight (`draw_mask`) instead of uniformly."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"Rebuilder built for {len(self.in_channels)} levels, got {len(feats)}")
        token_mask = self.draw_mask(feats[0].shape[0], generator, token_weights).to(feats[-1].device)
        rebuilt = []
        if not self.rebuild:
            for feat in feats:
                level_mask = F.interpolate(token_mask[:, None].float(), size=feat.shape[-2:], mode="nearest")
                rebuilt.append(feat * (1 - level_mask.to(feat.dtype)))
            return rebuilt, token_mask
        x = self.tokens(feats[-1], token_mask)
        for feat, projector in zip(feats, self.projectors):
            out = projector(x)
            if out.shape[-2:] != feat.shape[-2:]:
                out = F.interpolate(out, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            level_mask = F.interpolate(token_mask[:, None].float(), size=feat.shape[-2:], mode="nearest").bool()
            rebuilt.append(torch.where(level_mask, out.to(feat.dtype), feat))
        return rebuilt, token_mask
