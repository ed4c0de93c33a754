"""Mix Transformer (MiT-B0…B5, the SegFormer/DAFormer encoder) on top of `transformers.SegformerModel`.

Random init from a config offline; `from_pretrained` a Hub id (`nvidia/mit-b5`) or a local HF folder when given.
Returns the 4 hidden states (strides 4/8/16/32). ImageNet files in SegFormer's mmseg layout (`mit_b5.pth`:
`patch_embed1.proj`, `block1.0.attn.q`/`kv`/`sr`, `norm1`) are renamed to the `transformers` layout
(`stages.0.patch_embeddings.proj`, `...attention.q_proj`/`k_proj`/`v_proj`); so are the backbones of released
DAFormer/HRDA/MIC checkpoints.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from mfmseg.errors import UserError
from mfmseg.models.encoder import PACKAGED, FeatureInfo, load_imagenet_file
from mfmseg.models.weights import hf_from_pretrained

if TYPE_CHECKING:
    from transformers import SegformerConfig

MIT_SIZES = {  # depths, hidden sizes
    "b0": ([2, 2, 2, 2], [32, 64, 160, 256]),
    "b1": ([2, 2, 2, 2], [64, 128, 320, 512]),
    "b2": ([3, 4, 6, 3], [64, 128, 320, 512]),
    "b3": ([3, 4, 18, 3], [64, 128, 320, 512]),
    "b4": ([3, 8, 27, 3], [64, 128, 320, 512]),
    "b5": ([3, 6, 40, 3], [64, 128, 320, 512]),
}

STRIDES = [4, 8, 16, 32]  # of the 4 hidden states (patch embeddings with strides 4, 2, 2, 2)

MIT_BLOCK_RENAMES = [
    ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."), ("attn.q.", "attention.q_proj."),
    ("attn.proj.", "attention.o_proj."), ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
    ("attn.norm.", "attention.sequence_reduction.layer_norm."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
]


def mit_mmseg_to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """SegFormer/mmseg MiT keys -> transformers SegformerModel keys (kv is split into k and v)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(weight|bias)", key):
            part = "proj" if m[2] == "proj" else "layer_norm"
            out[f"stages.{int(m[1]) - 1}.patch_embeddings.{part}.{m[3]}"] = value
        elif m := re.fullmatch(r"norm(\d)\.(weight|bias)", key):
            out[f"stages.{int(m[1]) - 1}.layer_norm.{m[2]}"] = value
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)", key):
            prefix, rest = f"stages.{int(m[1]) - 1}.blocks.{m[2]}.", m[3]
            if rest.startswith("attn.kv."):
                k, v = value.chunk(2, dim=0)
                leaf = rest[len("attn.kv."):]
                out[prefix + "attention.k_proj." + leaf] = k
                out[prefix + "attention.v_proj." + leaf] = v
                continue
            for old, new in MIT_BLOCK_RENAMES:
                if rest.startswith(old):
                    out[prefix + new + rest[len(old):]] = value
                    break
            else:
                raise UserError(f"unexpected MiT key '{key}'")
        elif not key.startswith("head."):  # ImageNet classifier: not part of the encoder
            raise UserError(f"unexpected MiT key '{key}'")
    return out


def mit_config(size: str, drop_path: float = 0.1) -> SegformerConfig:
    from transformers import SegformerConfig  # here, not at the top: transformers takes seconds to import

    depths, dims = MIT_SIZES[size]
    return SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=depths, hidden_sizes=dims,
                           num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3],
                           strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4], hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, drop_path_rate=drop_path)


class MiT(nn.Module):
    """The `models.encoder.Encoder` contract: 4 levels at strides 4/8/16/32; inputs multiples of 32."""

    size_multiple = 32

    def __init__(self, size: str = "b5", drop_path: float = 0.1) -> None:
        super().__init__()
        if size not in MIT_SIZES:
            raise ValueError(f"MiT size {size!r} not in {sorted(MIT_SIZES)}")
        self.size = size
        self.name = f"mit_{size}"
        from transformers import SegformerModel

        self.model = SegformerModel(mit_config(size, drop_path))
        self.feature_info = [FeatureInfo(c, s) for c, s in zip(MIT_SIZES[size][1], STRIDES)]

    def load_hf(self, name_or_path: str) -> None:
        """Weights of a HF SegFormer/MiT checkpoint (Hub id or local folder) into this encoder."""
        from transformers import SegformerModel

        pretrained = SegformerModel.from_pretrained(name_or_path)
        self.model.load_state_dict(pretrained.state_dict())

    def load_imagenet(self, source: str) -> None:
        """A HF folder or Hub id (`nvidia/mit-b5`), or a file in the mmseg or the transformers layout."""
        path = Path(source)
        if source == PACKAGED or (path.suffix and not path.is_dir()):
            load_imagenet_file(self, source)
            return
        hf_from_pretrained(lambda: self.load_hf(source), source, "MiT weights")

    def convert_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """SegFormer's mmseg keys (ImageNet `mit_b*.pth`, released DAFormer backbones) or `SegformerModel` keys ->
        ours (the transformers model lives under `model.`)."""
        if any(k.startswith("patch_embed1.") for k in sd):
            sd = mit_mmseg_to_hf(sd)
        return {f"model.{k}": v for k, v in sd.items()}

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """transformers' own per-block checkpointing (SegformerLayer is a GradientCheckpointingLayer); a test
        checks that blocks really are recomputed in backward and that gradients are unchanged."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
            if enabled:
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.activation_checkpointing_disable()
        elif enabled:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_disable()

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(pixel_values=x, output_hidden_states=True).hidden_states)
