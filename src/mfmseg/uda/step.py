"""One UDA training iteration (METHOD.md §3, in order), composed of the small modules beside it.

Each loss is followed by its own backward pass so that only one autograd graph is alive at a time; the caller
owns `zero_grad`, gradient averaging and `optimizer.step`. The teacher, the frozen ImageNet model and the
Rebuilder live here, never inside the student: the teacher and the ImageNet copy are deep copies of a student
that does not contain the Rebuilder, and export only ever sees the student.

The student is a plain `Segmentor` or an `HRDASegmentor`; the step uses only their shared contract: `encode` /
`decode` for training outputs (scored by `losses.segmentation_loss`), `forward` for inference (the teacher's
pseudo-labels, panels) and `encode_context` / `context_features` for the feature distance.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfmseg.config import UDAConfig
from mfmseg.errors import UserError
from mfmseg.models.hrda import context_features
from mfmseg.uda.ema import ema_update, make_teacher, set_teacher_mode
from mfmseg.uda.fd import feature_distance
from mfmseg.uda.losses import resize_logits, segmentation_loss
from mfmseg.uda.mfm import Rebuilder, mfm_loss
from mfmseg.uda.mic import mask_image
from mfmseg.uda.mixing import class_mix_masks, mix, strong_augment
from mfmseg.uda.pseudo import pseudo_label, zero_margins


def make_frozen_copy(model: nn.Module) -> nn.Module:
    """The ImageNet reference for FD: eval mode (running BN statistics, no dropout), no gradients."""
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


@dataclass
class _Iteration:
    """What every loss of one iteration shares: where it is, how to run, where results go."""
    iteration: int
    autocast_dtype: torch.dtype | None
    scaler: Any
    generator: torch.Generator | None
    losses: dict[str, float]
    visuals: dict[str, Tensor] | None


class UDAStep:
    """Owns the EMA teacher, the ImageNet copy (FD) and the Rebuilder (MFM) around a student Segmentor."""

    def __init__(self, student: nn.Module, cfg: UDAConfig, *, crop_hw: Sequence[int],
                 device: torch.device | str) -> None:
        self.student, self.cfg, self.device = student, cfg, torch.device(device)
        self.self_training = cfg.method != "source_only"
        self.teacher: nn.Module | None = make_teacher(student).to(self.device) if self.self_training else None
        self.imnet: nn.Module | None = (make_frozen_copy(student).to(self.device)
                                        if self.self_training and cfg.fd.enabled else None)
        # sized for what the encoder sees: HRDA's context and detail inputs are 512² windows of a 1024² crop
        self.rebuilder: Rebuilder | None = (
            Rebuilder.for_segmentor(student, student.encoder_input_size(crop_hw), cfg.mfm).to(self.device)
            if cfg.mfm.enabled else None)
        domain = cfg.mfm.domain if cfg.mfm.enabled else "none"
        self.mfm_on_source = domain in ("source", "both")
        self.mfm_on_target = domain in ("target", "both") and self.self_training
        self.mfm_on_mixed = domain == "mixed" and self.self_training

    # ---- plumbing -------------------------------------------------------------------------------------------
    def rebuilder_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.rebuilder.parameters()) if self.rebuilder is not None else iter(())

    def _autocast(self, run: "_Iteration"):
        dtype = run.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _backward(self, named: dict[str, Tensor], run: "_Iteration") -> None:
        """Check every term before anything reaches the gradients, then one backward for their sum."""
        for name, value in named.items():
            if not bool(torch.isfinite(value.detach()).all()):
                raise FloatingPointError(f"loss {name} is NaN/inf at iteration {run.iteration}")
            run.losses[name] = float(value.detach())
        total = sum(named.values())
        (run.scaler.scale(total) if run.scaler is not None else total).backward()

    # ---- the iteration --------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor], iteration: int, *, autocast_dtype: torch.dtype | None = None,
                   scaler: Any = None, generator: torch.Generator | None = None, return_visuals: bool = False
                   ) -> tuple[dict[str, float], dict[str, Tensor] | None]:
        """Runs METHOD.md §3 (EMA, source CE + FD [+ source MFM], ClassMix CE, MIC, target MFM), each with its
        backward. Randomness comes from `generator` (CPU) or, when None, torch's global RNG."""
        run = _Iteration(iteration, autocast_dtype, scaler, generator, {}, {} if return_visuals else None)
        if self.teacher is not None:
            ema_update(self.teacher, self.student, iteration, self.cfg.alpha)
        self._source_losses(batch["src_img"], batch["src_label"], run)
        if self.self_training:
            tgt_img = batch["tgt_img"]
            labels, weight = self._pseudo_labels(tgt_img, run)
            self._mix_loss(batch["src_img"], batch["src_label"], tgt_img, labels, weight, run)
            if self.cfg.mic.enabled:
                self._mic_loss(tgt_img, labels, weight, run)
            if self.mfm_on_target:
                self._mfm_target(tgt_img, labels, weight, run)
            if run.visuals is not None:
                run.visuals.update(tgt_img=tgt_img, pseudo_label=labels)
        if run.visuals is not None:
            run.visuals.update(tgt_img=batch["tgt_img"], tgt_pred=self._student_prediction(batch["tgt_img"]))
            if "tgt_label" in batch:
                run.visuals["tgt_label"] = batch["tgt_label"]
        return run.losses, _to_cpu(run.visuals)

    def _source_losses(self, img: Tensor, label: Tensor, run: "_Iteration") -> None:
        """Source CE, FD and (domain source/both) source MFM share one encoder pass and one backward."""
        with self._autocast(run):
            feats = self.student.encode(img)
            logits = self.student.decode(feats)
        named = {"loss_src": segmentation_loss(logits, label)}
        if self.imnet is not None:  # HRDA: the context scale (the 0.5-resized image), as the reference does
            with torch.no_grad(), self._autocast(run):
                imnet_feats = self.imnet.encode_context(img)
            fd = feature_distance(context_features(feats)[-1], imnet_feats[-1], label, self.cfg.fd.thing_classes,
                                  self.cfg.fd.cell_ratio, self.student.num_classes)
            named["loss_fd"] = self.cfg.fd.weight * fd
        if self.mfm_on_source:
            with self._autocast(run):
                out = mfm_loss(self.student, self.rebuilder, feats, label, None, run.generator,
                               self.cfg.mfm.freeze_decoder_bn)
            named["loss_mfm_src"] = self.cfg.mfm.weight * out.loss
            if run.visuals is not None and not self.mfm_on_target:
                run.visuals.update(_mfm_visuals(out.token_mask, out.logits, img.shape[-2:]))
        if run.visuals is not None:
            run.visuals.update(src_img=img, src_label=label)
        self._backward(named, run)

    @torch.no_grad()
    def _pseudo_labels(self, tgt_img: Tensor, run: "_Iteration") -> tuple[Tensor, Tensor]:
        set_teacher_mode(self.teacher)
        with self._autocast(run):
            logits = self.teacher(tgt_img)  # inference path: HRDA slides its detail windows over the crop
        logits = resize_logits(logits.float(), tuple(tgt_img.shape[-2:]))
        labels, weight = pseudo_label(logits, self.cfg.pseudo_threshold)
        run.losses["pseudo_q"] = float(weight.flatten()[0])  # read before the margins may zero every pixel
        return labels, zero_margins(weight, self.cfg.pseudo_margins)

    def _mix_loss(self, src_img: Tensor, src_label: Tensor, tgt_img: Tensor, labels: Tensor, weight: Tensor,
                  run: "_Iteration") -> None:
        with torch.no_grad():
            mask = class_mix_masks(src_label, batch_wide_classes=self.cfg.mix.batch_wide_classes,
                                   generator=run.generator)
            mixed_img = strong_augment(mix(mask, src_img, tgt_img), self.cfg.mix, run.generator)
            mixed_label = mix(mask, src_label, labels)
            mixed_weight = mix(mask, torch.ones_like(weight), weight)
        with self._autocast(run):
            feats = self.student.encode(mixed_img)
            named = {"loss_mix": segmentation_loss(self.student.decode(feats), mixed_label, mixed_weight)}
            if self.mfm_on_mixed:  # one encoder pass, one backward for both terms
                out = mfm_loss(self.student, self.rebuilder, feats, mixed_label, mixed_weight, run.generator,
                               self.cfg.mfm.freeze_decoder_bn)
                named["loss_mfm"] = self.cfg.mfm.weight * out.loss
        self._backward(named, run)
        if run.visuals is not None:
            run.visuals.update(mixed_img=mixed_img, mixed_label=mixed_label)
            if self.mfm_on_mixed:
                run.visuals.update(_mfm_visuals(out.token_mask, out.logits, mixed_img.shape[-2:]))

    def _mic_loss(self, tgt_img: Tensor, labels: Tensor, weight: Tensor, run: "_Iteration") -> None:
        """MIC: the target image, colour-augmented on its own draws, with blocks zeroed; same pseudo-labels."""
        mic = self.cfg.mic
        with torch.no_grad():
            augmented = strong_augment(tgt_img, self.cfg.mix, run.generator)
            masked = mask_image(augmented, mic.block_size, mic.mask_ratio, run.generator)
        with self._autocast(run):
            output = self.student.decode(self.student.encode(masked))
        self._backward({"loss_mic": mic.weight * segmentation_loss(output, labels, weight)}, run)

    def _mfm_target(self, tgt_img: Tensor, labels: Tensor, weight: Tensor, run: "_Iteration") -> None:
        """L_mfm on the un-augmented target crop against the teacher's pseudo-labels and weight."""
        with self._autocast(run):
            feats = self.student.encode(tgt_img)
            out = mfm_loss(self.student, self.rebuilder, feats, labels, weight, run.generator,
                           self.cfg.mfm.freeze_decoder_bn)
        self._backward({"loss_mfm": self.cfg.mfm.weight * out.loss}, run)
        if run.visuals is not None:
            run.visuals.update(_mfm_visuals(out.token_mask, out.logits, tgt_img.shape[-2:]))

    @torch.no_grad()
    def _student_prediction(self, img: Tensor) -> Tensor:
        """Eval-mode prediction (running BN statistics), so that asking for a panel never changes training."""
        was_training = self.student.training
        self.student.eval()
        try:
            logits = self.student(img)
        finally:
            self.student.train(was_training)
        return resize_logits(logits.float(), tuple(img.shape[-2:])).argmax(1)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "rebuilder": self.rebuilder.state_dict() if self.rebuilder is not None else None,
                "has_teacher": self.teacher is not None, "has_rebuilder": self.rebuilder is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in (("teacher", self.teacher), ("rebuilder", self.rebuilder)):
            saved = state.get(name)
            if module is not None and saved is None:
                raise UserError(f"the checkpoint has no {name} state but this config needs one "
                                f"(uda.method={self.cfg.method}, uda.mfm.enabled={self.cfg.mfm.enabled}); "
                                f"resume with the run's own config")
            if module is not None:
                module.load_state_dict(saved)


def _mfm_visuals(token_mask: Tensor, logits: Tensor, size: Sequence[int]) -> dict[str, Tensor]:
    mask = F.interpolate(token_mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    pred = resize_logits(logits.detach().float(), tuple(size)).argmax(1)
    return {"mfm_mask": mask, "mfm_pred": pred}


def _to_cpu(visuals: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    if visuals is None:
        return None
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in visuals.items()}


