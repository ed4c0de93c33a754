"""Vision-foundation-model encoders: DINOv2, DINOv2 with registers and DINOv3 ViTs (through `transformers`), with a
simple feature pyramid so that the DAFormer head, HRDA and the MFM Rebuilder see 4 levels at strides 4/8/16/32.

Weights: random init from a config offline; `load_imagenet(source)` reads a Hub id (`facebook/dinov2-large`,
`facebook/dinov2-with-registers-large`, `facebook/dinov3-vitl16-pretrain-lvd1689m`), a local `save_pretrained`
folder, or a .safetensors/.pth file in the transformers layout, into the ViT (the neck stays random: it is new).

Token grid (one rule for every patch size): the ViT always runs on a grid of ceil(H/16) × ceil(W/16) tokens; the
input is resized (bilinear) to that grid times the patch size. For DINOv3 (patch 16) and sides that are multiples of
16 this is a no-op; for DINOv2 (patch 14) a 512² crop becomes 448² (32×32 tokens, as many as a patch-16 ViT). So
the token map is always at stride 16 of the crop and `feature_info` tells the truth for any input whose sides are
multiples of `size_multiple` (32); other sizes never crash: level i has ceil(H/16)·16/stride_i rows (the stride-32
level ceil(ceil(H/16)/2)), covering the whole image. DINOv2's learned position embeddings are interpolated to the
grid (bicubic, transformers' `interpolate_pos_encoding`); DINOv3 uses RoPE, which takes any grid.
Why resize instead of a patch-14 grid: strides stay powers of two (HRDA's detail windows, the Rebuilder's
projectors and the head assume it) and a ViT-L step costs the same for DINOv2 and DINOv3 at a given crop.

Neck (ViTDet's simple feature pyramid, fed from 4 blocks as BEiT/ViT-Adapter segmentation do): the patch tokens of
blocks L/4, L/2, 3L/4 and L (24-block ViT-L: 6, 12, 18, 24), each through the ViT's final LayerNorm, feed stride 4
(two 2× deconvs, D -> D/2 -> D/4), 8 (one deconv, D/2), 16 (identity, D) and 32 (2×2 max-pool, D). The shallowest
tap feeds the finest level because early blocks keep local detail that boundaries need, and the last block feeds the
deepest level because that is where DINO's semantics are and the level MFM's Rebuilder builds its tokens from.
Each level ends with a LayerNorm over channels. Channels [D/4, D/2, D, D] (ViT-L: 256/512/1024/1024) keep the
stride-4 map as light as MiT's.

MFM on a ViT: masking happens after the neck, on the Rebuilder's grid made from the deepest level (stride 32,
resized to `uda.mfm.grid`), exactly as for MiT; the ViT itself never sees a mask token, so the student's encoder
pass is shared with the other losses and the exported network is the baseline network. At 512² the stride-32
level is 16×16 = the paper's grid: one token covers 1/256 of the crop (32×32 px; the paper's "≈ 1/512 of the
image" counts a 1024×512 Cityscapes image, 2 crops wide).

Optimiser hooks (`engine.training.optim.layerwise_groups`): `num_layers` = depth + 1, `layer_id(name)` = 0 for the patch
embedding and tokens, i + 1 for block i, depth + 1 for the final norm and the neck; `no_weight_decay()` names the
position embedding, class/register/mask tokens, layer-scale and bias parameters (DINOv2's own recipe).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.errors import UserError
from mfmseg.models.encoder import PACKAGED, FeatureInfo
from mfmseg.models.weights import hf_from_pretrained, load_strict, read_state_dict

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

TOKEN_STRIDE = 16  # the stride of the token map in the crop, whatever the patch size
VIT_SIZES = {  # hidden size, depth, heads (the references'; "tiny" is ours, for tests and CPUs)
    "tiny": (64, 4, 4),
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
}


@dataclass(frozen=True)
class Family:
    """How one transformers ViT family is built and named."""
    label: str  # what `mfmseg models` shows
    model: str  # transformers class names, imported when a ViT is built (transformers takes seconds to import)
    config: str
    patch: int
    registers: int
    blocks: str  # parameter-name prefix of block i: "<blocks><i>."
    norm: str  # the final LayerNorm's attribute
    tokens: tuple[str, ...]  # learned tokens and position embeddings: no weight decay
    extra: tuple[tuple[str, object], ...] = ()  # config keyword arguments of the reference checkpoints


FAMILIES = {
    "dinov2": Family("dinov2", "Dinov2Model", "Dinov2Config", 14, 0, "encoder.layer.", "layernorm",
                     ("cls_token", "mask_token", "position_embeddings"), (("image_size", 518),)),
    "dinov2reg": Family("dinov2reg", "Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", 14, 4, "encoder.layer.",
                        "layernorm", ("cls_token", "mask_token", "register_tokens", "position_embeddings"),
                        (("image_size", 518), ("num_register_tokens", 4))),
    # pos_embed_*: DINOv3's RoPE augmentation of pre-training (random coordinate rescaling in train mode) is off
    "dinov3": Family("dinov3", "DINOv3ViTModel", "DINOv3ViTConfig", 16, 4, "model.layer.", "norm",
                     ("cls_token", "mask_token", "register_tokens"),
                     (("num_register_tokens", 4), ("layerscale_value", 1e-5), ("pos_embed_rescale", None),
                      ("pos_embed_jitter", None), ("pos_embed_shift", None))),
}


def transformers_class(name: str) -> type:
    """A transformers class by name, imported on first use so that CNN runs never pay for transformers."""
    return getattr(importlib.import_module("transformers"), name)


def vit_config(family: str, size: str, drop_path: float = 0.1, patch_size: int | None = None) -> PretrainedConfig:
    """The transformers config of a reference ViT (random init offline); DINOv3's MLP is 4× wide like DINOv2's."""
    fam = FAMILIES[family]
    dim, depth, heads = VIT_SIZES[size]
    kwargs = dict(fam.extra, hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                  patch_size=patch_size or fam.patch, drop_path_rate=drop_path)
    if family == "dinov3":
        kwargs["intermediate_size"] = 4 * dim
    return transformers_class(fam.config)(**kwargs)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a B×C×H×W map (an `nn.LayerNorm`, so the optimiser's norm rule sees it)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid over 4 stride-16 maps of width `dim`: strides 4/8/16/32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.channels = [dim // 4, dim // 2, dim, dim]
        self.branches = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), ChannelNorm(dim // 2, eps=1e-6),
                          nn.GELU(), nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)),
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, ceil_mode=True),
        ])
        self.norms = nn.ModuleList(ChannelNorm(c, eps=1e-6) for c in self.channels)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [norm(branch(m)) for m, branch, norm in zip(maps, self.branches, self.norms)]


def default_taps(depth: int) -> tuple[int, ...]:
    """Blocks L/4, L/2, 3L/4, L (1-based; hidden_states index): 24 -> (6, 12, 18, 24), 4 -> (1, 2, 3, 4)."""
    return tuple(max(1, round(depth * k / 4)) for k in (1, 2, 3, 4))


class ViTEncoder(nn.Module):
    """The `models.encoder.Encoder` contract over a DINOv2/DINOv3 ViT; see the module docstring for the rules."""

    size_multiple = 32

    def __init__(self, family: str = "dinov2", size: str = "l", drop_path: float = 0.1,
                 patch_size: int | None = None, taps: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if family not in FAMILIES or size not in VIT_SIZES:
            raise ValueError(f"ViT {family!r}/{size!r}: families {sorted(FAMILIES)}, sizes {sorted(VIT_SIZES)}")
        self.family = FAMILIES[family]
        self.drop_path = drop_path
        self.vit = transformers_class(self.family.model)(vit_config(family, size, drop_path, patch_size))
        dim, depth, _ = VIT_SIZES[size]
        self.patch_size = int(self.vit.config.patch_size)
        self.taps = tuple(taps or default_taps(depth))
        if len(self.taps) != 4 or not all(1 <= t <= depth for t in self.taps):
            raise ValueError(f"taps must be 4 block numbers in 1..{depth}, got {self.taps}")
        self.neck = SimplePyramid(dim)
        self.feature_info = [FeatureInfo(c, s) for c, s in zip(self.neck.channels, (4, 8, 16, 32))]
        self.num_layers = depth + 1  # engine.training.optim: layer ids 0 (embeddings) .. depth + 1 (norm, neck)
        self.name = f"{self.family.label}_vit{size}{self.patch_size}"  # e.g. dinov2_vitl14, dinov3_vitl16
        # pre-training's masked-image token: segmentation never masks ViT inputs (MFM masks after the neck), and
        # a parameter that never gets a gradient would stall DDP
        self.vit.embeddings.mask_token.requires_grad_(False)

    # ---- forward ---------------------------------------------------------------------------------------------
    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        return math.ceil(h / TOKEN_STRIDE), math.ceil(w / TOKEN_STRIDE)

    def forward(self, x: Tensor) -> list[Tensor]:
        gh, gw = self.token_grid(*x.shape[-2:])
        size = (gh * self.patch_size, gw * self.patch_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        hidden = self.vit(pixel_values=x, output_hidden_states=True).hidden_states
        norm = getattr(self.vit, self.family.norm)
        prefix = 1 + self.family.registers  # class token, then registers, then the patch tokens row by row
        maps = [norm(hidden[t][:, prefix:]).transpose(1, 2).reshape(x.shape[0], -1, gh, gw) for t in self.taps]
        return self.neck(maps)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """transformers' per-block checkpointing (each ViT layer is a GradientCheckpointingLayer)."""
        if enabled:
            self.vit.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.vit.activation_checkpointing_disable()

    # ---- optimiser hooks (engine.training.optim.layerwise_groups) ---------------------------------------------
    def layer_id(self, name: str) -> int:
        """0: patch embedding, tokens; i + 1: block i; num_layers: the final norm and the neck (full lr)."""
        if name.startswith("vit.embeddings."):
            return 0
        m = re.match(rf"vit\.{re.escape(self.family.blocks)}(\d+)\.", name)
        return int(m[1]) + 1 if m else self.num_layers

    def no_weight_decay(self) -> set[str]:
        """Tokens and position embeddings, layer-scale and the ViT's biases (DINOv2's fine-tuning recipe)."""
        tokens = {f"vit.embeddings.{t}" for t in self.family.tokens}
        return {n for n, _ in self.named_parameters()
                if n in tokens or (n.startswith("vit.") and (n.endswith(".bias") or ".lambda1" in n))}

    # ---- weights ---------------------------------------------------------------------------------------------
    def convert_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """A transformers-layout ViT state dict (`embeddings.*`, `encoder.layer.*` / `model.layer.*`) -> ours;
        keys already under `vit.`/`neck.` pass through."""
        return {k if k.startswith(("vit.", "neck.")) else f"vit.{k}": v for k, v in sd.items()}

    def load_imagenet(self, source: str) -> None:
        """Pretrained ViT weights: a Hub id or `save_pretrained` folder (`from_pretrained`), or a weight file in the
        transformers layout. Every ViT key must match (a ViT-B folder into a ViT-L encoder is an error); the neck
        is new and keeps its random init."""
        path = Path(source)
        if source == PACKAGED:
            raise UserError(f"model.pretrained={PACKAGED} is for EfficientNet-Lite; a {self.family.label} ViT "
                            f"loads a Hub id (e.g. facebook/dinov2-large), a save_pretrained folder or a file")
        if path.suffix and not path.is_dir():
            sd = {k[len("vit."):]: v for k, v in self.convert_state_dict(read_state_dict(source)).items()
                  if k.startswith("vit.")}
        else:
            sd = self._from_pretrained(source).state_dict()
        load_strict(self.vit, sd, f"{self.family.label} ViT weights {source}")

    def _from_pretrained(self, source: str) -> PreTrainedModel:
        overrides = dict(drop_path_rate=self.drop_path)
        if self.family.label == "dinov3":
            overrides.update(pos_embed_rescale=None, pos_embed_jitter=None, pos_embed_shift=None)
        model = transformers_class(self.family.model)
        return hf_from_pretrained(lambda: model.from_pretrained(source, **overrides), source,
                                  f"{self.family.label} ViT weights")


__all__ = ["ViTEncoder", "SimplePyramid", "ChannelNorm", "FAMILIES", "VIT_SIZES", "vit_config", "default_taps"]
