"""Masked Feature Modeling (docs/method.md §2): the loss term. The network that rebuilds the masked features is
`uda/rebuilder.py`; the *same* decode head then has to classify from the rebuilt features, so the task is
supervised by pseudo-labels, not by a feature-regression target.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.config import MFMConfig
from mfmseg.models.batchnorm import bn_eval_mode, frozen_bn_statistics
from mfmseg.models.segmentor import SegmentationModel, resize_logits
from mfmseg.uda.rebuilder import Rebuilder
from mfmseg.uda.term import AuxiliaryLoss, MixedPass, Run, SourcePass, TargetPass, TermOutput, Visuals


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
