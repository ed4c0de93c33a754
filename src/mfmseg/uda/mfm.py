"""Masked Feature Modeling (docs/method.md §2): the Rebuilder and the MFM loss.

The Rebuilder masks ~40 % of a token grid built from the deepest encoder level, lets two ViT blocks infer the
masked tokens from the visible ones, projects the tokens back to every level the decode head reads and swaps
them in where tokens were masked. The *same* decode head then has to classify from the rebuilt features, so the
task is supervised by pseudo-labels, not by a feature-regression target.

Unlike the official module (hard-coded to 512 px crops) every size here is derived: the grid from the config,
each level's projector depth from its size at the training crop, the positional embedding for the actual grid;
a projector output that does not match a level (another crop size) is resized bilinearly.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.config import MFMConfig
from mfmseg.models.batchnorm import bn_eval_mode, frozen_bn_statistics
from mfmseg.models.segmentor import SegmentationModel, resize_logits
from mfmseg.uda.term import AuxiliaryLoss, MixedPass, Run, SourcePass, TargetPass, TermOutput, Visuals

class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a B×C×H×W map (per position), as ConvNeXt/SAM define it."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps
                            ).permute(0, 3, 1, 2)


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


class MFMOutput(NamedTuple):
    loss: Tensor
    token_mask: Tensor  # B×grid×grid bool, True = masked
    logits: Tensor  # decoder logits on the rebuilt features, at output stride


def mfm_loss(segmentor: SegmentationModel, rebuilder: Rebuilder, feats: object, labels: Tensor,
             weight: Tensor | None, generator: torch.Generator | None = None,
             freeze_decoder_bn: bool = False, token_weights: Tensor | None = None) -> MFMOutput:
    """The segmentor's own loss of decode(rebuilt features) against `labels` and `weight`.

    Every single-scale feature list in the training features is rebuilt with its own token mask
    (`segmentor.map_features`). For HRDA (our reading; the paper does not say) that is the context and the detail
    list, decoded through the HRDA head (fusion, detail window) and scored with the HRDA loss. The returned token
    mask is the first list's (HRDA: the context's), the logits `segmentor.output_logits` (HRDA: the fused map).
    `token_weights` (single-scale models only) draws the mask by weight (`Rebuilder.draw_mask`).
    """
    bn_context = frozen_bn_statistics(segmentor) if freeze_decoder_bn else contextlib.nullcontext()
    masks: list[Tensor] = []

    def rebuild(level_feats: list[Tensor]) -> list[Tensor]:
        rebuilt, token_mask = rebuilder(level_feats, generator=generator, token_weights=token_weights)
        masks.append(token_mask)
        return rebuilt

    rebuilt = segmentor.map_features(feats, rebuild)
    with bn_context:  # only the decoder runs here: the encoder's statistics are those of clean images
        out = segmentor.decode(rebuilt)
    return MFMOutput(segmentor.loss(out, labels, weight), masks[0], segmentor.output_logits(out))


class MaskedFeatureModelingLoss(AuxiliaryLoss):
    """λ·L_mfm on the domains of `cfg.domain`: target (the paper: its own encoder pass on the un-augmented target
    crop, pseudo-labels and weight), source (the source pass, ground truth), both, or mixed (ours: the ClassMix
    pass and its labels and weights). Owns the Rebuilder, trained in its own lr group, saved as `rebuilder`."""

    def __init__(self, student: SegmentationModel, crop_hw: Sequence[int], cfg: MFMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.reads_teacher_entropy = cfg.mask_strategy != "random"
        # sized for what the encoder sees: HRDA's context and detail inputs are 512² windows of a 1024² crop
        self.rebuilder = Rebuilder.for_segmentor(student, student.encoder_input_size(crop_hw), cfg)

    def _loss(self, student: SegmentationModel, feats: object, labels: Tensor, weight: Tensor | None,
              run: Run, name: str, size: Sequence[int], token_weights: Tensor | None = None) -> TermOutput:
        out = mfm_loss(student, self.rebuilder, feats, labels, weight, run.generator, self.cfg.freeze_decoder_bn,
                       token_weights)
        return TermOutput({name: self.cfg.weight * out.loss}, mfm_visuals(out.token_mask, out.logits, size))

    def on_source(self, student: SegmentationModel, src: SourcePass, run: Run) -> TermOutput | None:
        if self.cfg.domain not in ("source", "both"):
            return None
        with run.autocast():
            return self._loss(student, src.feats, src.label, None, run, "loss_mfm_src", src.img.shape[-2:])

    def on_mixed(self, student: SegmentationModel, mixed: MixedPass, run: Run) -> TermOutput | None:
        if self.cfg.domain != "mixed":  # one encoder pass, one backward for both terms
            return None
        with run.autocast():
            return self._loss(student, mixed.feats, mixed.label, mixed.weight, run, "loss_mfm", mixed.img.shape[-2:])

    def on_target(self, student: SegmentationModel, tgt: TargetPass, run: Run) -> TermOutput | None:
        if self.cfg.domain not in ("target", "both"):
            return None
        # freeze_encoder_bn: the extra clean-target pass must not move the encoder's BatchNorm statistics toward
        # the target domain (studies/mfm/README.md: at 400 iterations that side effect, not MFM's gradient, helped)
        # encoder_bn_eval: nor may its gradient see the all-target batch's statistics (the study's mechanism test)
        stats = (bn_eval_mode(student) if self.cfg.encoder_bn_eval else
                 frozen_bn_statistics(student) if self.cfg.freeze_encoder_bn else contextlib.nullcontext())
        with run.autocast(), stats:
            feats = student.encode(tgt.img)
        weights = mask_weights(tgt.entropy, self.rebuilder.grid, self.cfg.mask_strategy)
        with run.autocast():
            return self._loss(student, feats, tgt.label, tgt.weight, run, "loss_mfm", tgt.img.shape[-2:], weights)

    def param_parts(self) -> list[tuple[str, nn.Module, float]]:
        return [("rebuilder", self.rebuilder, self.cfg.lr)]  # its own lr: never the head's 10×

    def checkpoint_sections(self) -> dict[str, nn.Module]:
        return {"rebuilder": self.rebuilder}


MASK_WEIGHT_FLOOR = 1e-3  # every token keeps a chance to be masked, however (un)certain the teacher is


def mask_weights(entropy: Tensor | None, grid: int, strategy: str) -> Tensor | None:
    """Token weights for `Rebuilder.draw_mask`: None for `random` (the paper's uniform mask); otherwise the
    teacher's normalised pixel entropy (B×H×W, in [0, 1]) averaged over each token's pixels, as is (`uncertain`)
    or as 1 − entropy (`confident`), plus a small floor."""
    if strategy == "random":
        return None
    if entropy is None:
        raise ValueError(f"mask_strategy={strategy} needs the teacher's entropy of the target crop")
    pooled = F.adaptive_avg_pool2d(entropy[:, None].float(), (grid, grid))[:, 0]
    return (pooled if strategy == "uncertain" else 1.0 - pooled).clamp_min(0) + MASK_WEIGHT_FLOOR


def mfm_visuals(token_mask: Tensor, logits: Tensor, size: Sequence[int]) -> Visuals:
    """The token mask and the prediction from rebuilt features at the image's size, rendered on demand."""
    token_mask, logits = token_mask.detach(), logits.detach()

    def render() -> dict[str, Tensor]:
        mask = F.interpolate(token_mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
        return {"mfm_mask": mask, "mfm_pred": resize_logits(logits.float(), tuple(size)).argmax(1)}

    return render
