"""Mix Transformer (MiT-B0…B5, the SegFormer/DAFormer encoder) on top of `transformers.SegformerModel`.

Random init from a config offline; `from_pretrained` a Hub id (`nvidia/mit-b5`) or a local HF folder when given.
Returns the 4 hidden states (strides 4/8/16/32).
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import SegformerConfig, SegformerModel

MIT_SIZES = {  # depths, hidden sizes
    "b0": ([2, 2, 2, 2], [32, 64, 160, 256]),
    "b1": ([2, 2, 2, 2], [64, 128, 320, 512]),
    "b2": ([3, 4, 6, 3], [64, 128, 320, 512]),
    "b3": ([3, 4, 18, 3], [64, 128, 320, 512]),
    "b4": ([3, 8, 27, 3], [64, 128, 320, 512]),
    "b5": ([3, 6, 40, 3], [64, 128, 320, 512]),
}


def mit_config(size: str, drop_path: float = 0.1) -> SegformerConfig:
    depths, dims = MIT_SIZES[size]
    return SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=depths, hidden_sizes=dims,
                           num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3],
                           strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4], hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, drop_path_rate=drop_path)


class MiT(nn.Module):
    def __init__(self, size: str = "b5", drop_path: float = 0.1) -> None:
        super().__init__()
        self.size = size
        self.model = SegformerModel(mit_config(size, drop_path))
        self.out_channels = MIT_SIZES[size][1]

    def load_hf(self, name_or_path: str) -> None:
        """Weights of a HF SegFormer/MiT checkpoint (Hub id or local folder) into this encoder."""
        pretrained = SegformerModel.from_pretrained(name_or_path)
        self.model.load_state_dict(pretrained.state_dict())

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
