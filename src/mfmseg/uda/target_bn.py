"""The target-statistics pass (`uda.target_bn_pass`): AdaBN's effect at the price of one no-grad forward.

AdaBN (Li et al., 2016, "Revisiting Batch Normalization For Practical Domain Adaptation") replaces a network's
BatchNorm statistics with the target domain's. In DACS every train-mode pass sees source or ClassMix images, so the
running statistics that evaluation uses are mostly the source domain's. studies/mfm/README.md found that MFM's extra
clean-target pass helped a BatchNorm network through exactly this side effect (λ = 0 beat DACS on 6/6 seeds), not
through its loss. This term is that side effect as a first-class option: one train-mode student forward of the
clean target crop per iteration without a gradient, so it moves the BatchNorm running statistics (encoder and
decoder; with `model.norm_eval` only the decoder's) and changes nothing else: no loss, no gradient, no optimiser
state, no draw on the step's generator (HRDA's detail window draws from torch's global RNG).
"""

from __future__ import annotations

import torch

from mfmseg.models.segmentor import SegmentationModel
from mfmseg.uda.term import AuxiliaryLoss, Run, TargetPass, TermOutput


class TargetStatisticsPass(AuxiliaryLoss):
    """A term without a loss: `on_target` runs encode + decode of the clean target crop under no_grad."""

    def on_target(self, student: SegmentationModel, tgt: TargetPass, run: Run) -> TermOutput | None:
        with torch.no_grad(), run.autocast():
            student.decode(student.encode(tgt.img))
        return None
