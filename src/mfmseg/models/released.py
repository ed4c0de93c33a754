"""Released UDA checkpoints (DAFormer, HRDA, MIC, DACS) into our Segmentors.

mmseg 0.16 files: `state_dict` with `model.backbone.*`, `model.decode_head.*`, `ema_model.*`, `imnet_model.*`. The
backbone goes through the encoder's own converter (`Encoder.convert_state_dict`: mmseg MiT keys are renamed,
mmcv ResNet keys are ours), the head through its own (`convert_state_dict` of each head class); HRDA/MIC's
`decode_head.scale_attention.*` fills an HRDASegmentor's `scale_attention` (a single-scale Segmentor ignores it).
Imports the zoo (to build a model by name); the zoo never imports this module.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from mfmseg.config import ModelConfig
from mfmseg.errors import UserError
from mfmseg.models.hrda import HRDASegmentor
from mfmseg.models.weights import load_strict, read_state_dict
from mfmseg.models.zoo import build_model


def _released_head(head: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """(segmentation head, scale attention or None): HRDA/MIC wrap the DAFormer head as `head.*` next to a
    `scale_attention.*` head; DAFormer/DACS files have the segmentation head alone."""
    if any(k.startswith("head.") for k in head):
        attention = {k[len("scale_attention."):]: v for k, v in head.items() if k.startswith("scale_attention.")}
        return {k[len("head."):]: v for k, v in head.items() if k.startswith("head.")}, attention
    return head, None


def load_released_checkpoint(path: str | Path, model: str | nn.Module, which: str = "model",
                             num_classes: int | None = None) -> nn.Module:
    """A released DAFormer/HRDA/MIC/DACS (DeepLab-V2 or V3+) checkpoint (mmseg 0.16 `state_dict` with `model.*`,
    `ema_model.*`, `imnet_model.*`) into a Segmentor: `model` is one (filled in place) or a zoo name (built, with
    `num_classes` or the class count the checkpoint's classifier has). Returns the filled Segmentor."""
    if which not in ("model", "ema_model", "imnet_model"):
        raise UserError(f"which must be 'model' or 'ema_model', got '{which}'")
    sd = read_state_dict(path)
    prefix = f"{which}."
    part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not part:
        raise UserError(f"{path} has no '{which}.*' keys (found e.g. {list(sd)[:3]}): not a released "
                        f"DAFormer/HRDA/MIC checkpoint?")
    backbone = {k[len("backbone."):]: v for k, v in part.items() if k.startswith("backbone.")}
    head, attention = _released_head({k[len("decode_head."):]: v for k, v in part.items()
                                      if k.startswith("decode_head.")})
    if isinstance(model, str):
        model = _build_for_released(model, head, num_classes)
    load_strict(model.encoder, model.encoder.convert_state_dict(backbone), f"{path} ({which}.backbone)")
    load_strict(model.decode_head, model.decode_head.convert_state_dict(head), f"{path} ({which}.decode_head)")
    if isinstance(model, HRDASegmentor):  # a single-scale model drops the attention (single-scale inference)
        if not attention:
            raise UserError(f"{path} has no '{which}.decode_head.scale_attention.*' weights: it is not an HRDA/MIC "
                            f"checkpoint; load it into a model with model.hrda.enabled=false")
        load_strict(model.scale_attention, model.scale_attention.convert_state_dict(attention),
                    f"{path} ({which}.decode_head.scale_attention)")
    return model


def _build_for_released(name: str, head: dict[str, Tensor], num_classes: int | None) -> nn.Module:
    """The zoo model `name` with the checkpoint's class count (read from its classifier) unless one is given."""
    if num_classes is None:
        classifier = [v for k, v in head.items() if k in ("conv_seg.weight", "aspp_modules.0.conv.weight")]
        num_classes = int(classifier[0].shape[0]) if classifier else 19
    return build_model(ModelConfig(name=name, num_classes=num_classes))
