"""The UDA method: one `nn.Module` that owns every trained and frozen part and runs one iteration (docs/method.md §3).

`UDAStep` owns the student (any `models.segmentor.SegmentationModel`), the EMA teacher and the auxiliary losses
(`uda.term.AuxiliaryLoss`: FD with its ImageNet copy, MIC, MFM with its Rebuilder), composed in `build_terms`.
It answers what the trainer needs without knowing which terms are on: `train_step`, `param_parts` (what to
optimise at which lr beyond the student), `state_dict` / `load_state_dict` (the checkpoint sections) and
`sections` (every module with state, for health checks and broadcasting).

Each loss is followed by its own backward pass so that only one autograd graph is alive at a time; the caller owns
`zero_grad`, gradient averaging and `optimizer.step`. The teacher and the ImageNet copy are deep copies of a student
that contains no auxiliary module, so export, which sees only the student, never sees the Rebuilder.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mfmseg.config import UDAConfig
from mfmseg.errors import UserError
from mfmseg.models.segmentor import SegmentationModel, resize_logits
from mfmseg.models.weights import load_strict
from mfmseg.uda.ema import ema_update, make_teacher, set_teacher_mode
from mfmseg.uda.fd import FeatureDistanceLoss
from mfmseg.uda.mfm import MaskedFeatureModelingLoss
from mfmseg.uda.mic import MaskedImageConsistencyLoss
from mfmseg.uda.mixing import class_mix_masks, mix, strong_augment
from mfmseg.uda.pseudo import normalised_entropy, pseudo_label, pseudo_label_accuracy, zero_margins
from mfmseg.uda.target_bn import TargetStatisticsPass
from mfmseg.uda.term import AuxiliaryLoss, MixedPass, Run, SourcePass, TargetPass, TermOutput, Visuals


def build_terms(student: SegmentationModel, cfg: UDAConfig, crop_hw: Sequence[int]) -> dict[str, AuxiliaryLoss]:
    """The auxiliary losses switched on by the config, in the order they run within each pass (and so in which
    they draw randomness). A new term is one line here (and its import)."""
    self_training = cfg.method != "source_only"
    terms: dict[str, AuxiliaryLoss] = {}
    if cfg.fd.enabled and self_training:
        terms["fd"] = FeatureDistanceLoss(student, cfg.fd)
    if cfg.mic.enabled:
        terms["mic"] = MaskedImageConsistencyLoss(cfg.mic, cfg.mix)
    if cfg.mfm.enabled:
        terms["mfm"] = MaskedFeatureModelingLoss(student, crop_hw, cfg.mfm)
    if cfg.target_bn_pass and self_training:
        terms["target_bn"] = TargetStatisticsPass()
    return terms


class UDAStep(nn.Module):
    """Student, EMA teacher (self-training methods) and the auxiliary terms of one UDA method."""

    def __init__(self, student: nn.Module, cfg: UDAConfig, *, crop_hw: Sequence[int],
                 device: torch.device | str) -> None:
        super().__init__()
        self.cfg, self.device = cfg, torch.device(device)
        self.student = student
        self.teacher: nn.Module | None = make_teacher(student) if cfg.method != "source_only" else None
        self.terms = nn.ModuleDict(build_terms(student, cfg, crop_hw))
        self.to(self.device)

    # ---- what the trainer asks ------------------------------------------------------------------------------
    def param_parts(self) -> list[tuple[str, nn.Module, float]]:
        """(group name, module, lr) of every trained module besides the student (e.g. the Rebuilder)."""
        return [part for term in self.terms.values() for part in term.param_parts()]

    def sections(self) -> dict[str, nn.Module | None]:
        """Every module with state by its checkpoint key: student, teacher (None without one), term sections."""
        sections: dict[str, nn.Module | None] = {"student": self.student, "teacher": self.teacher}
        for term in self.terms.values():
            sections.update(term.checkpoint_sections())
        return sections

    def networks(self) -> list[nn.Module]:
        """Every segmentation network the step runs: the student, the EMA teacher and the terms' frozen copies
        (FD's ImageNet model), each a separate deep copy (what `train.compile` compiles)."""
        nets = [self.student] + ([self.teacher] if self.teacher is not None else [])
        return nets + [net for term in self.terms.values() for net in term.frozen_networks()]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The checkpoint sections {"student": ..., "teacher": ... or None, "rebuilder": ... (MFM)}: the on-disk
        layout of `mfmseg-train-v1`. Frozen copies of the student (FD's ImageNet model) are rebuilt, not saved."""
        return {name: m.state_dict() if m is not None else None for name, m in self.sections().items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False,
                        where: str = "checkpoint") -> None:  # type: ignore[override]
        """Load the sections this method has from a checkpoint dict; a section it needs but the checkpoint lacks
        (None or absent) is a one-line error. Sections it does not have are ignored (a source-only run resumed
        from a checkpoint that has a teacher section cannot happen: the config is checked first)."""
        for name, module in self.sections().items():
            if module is None:
                continue
            saved = state.get(name)
            if saved is None:
                raise UserError(f"the {where} has no {name} state but this config needs one "
                                f"(uda.method={self.cfg.method}); resume with the run's own config")
            if name == "student":
                load_strict(module, saved, where)
            else:
                module.load_state_dict(saved)

    # ---- the iteration --------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor], iteration: int, *, autocast_dtype: torch.dtype | None = None,
                   scaler: Any = None, generator: torch.Generator | None = None, return_visuals: bool = False,
                   panel_dtype: torch.dtype | None = None) -> tuple[dict[str, float], dict[str, Tensor] | None]:
        """EMA, source CE (+ source terms), pseudo-labels, ClassMix CE (+ mixed terms), target terms; each pass
        with its backward. Randomness comes from `generator` (CPU) or, when None, torch's global RNG.
        Returns the logged values and, with `return_visuals`, the panel images (CPU tensors, image size); the
        panel's eval-mode prediction runs under autocast in `panel_dtype` (evaluation's dtype, `eval.amp`)."""
        run = Run(iteration, self.device, autocast_dtype, generator)
        losses: dict[str, float] = {}
        panel: list[Visuals] = []
        if self.teacher is not None:
            ema_update(self.teacher, self.student, iteration, self.cfg.alpha)
        src_img, src_label = batch["src_img"], batch["src_label"]
        self._source_pass(src_img, src_label, run, losses, panel, scaler)
        if self.teacher is not None:
            tgt_img = batch["tgt_img"]
            labels, weight, entropy = self._pseudo_labels(tgt_img, run, losses, batch.get("tgt_label"))
            self._mixed_pass(src_img, src_label, tgt_img, labels, weight, run, losses, panel, scaler)
            target = TargetPass(tgt_img, labels, weight, entropy)
            for term in self.terms.values():
                self._backward(term.on_target(self.student, target, run), run, losses, panel, scaler)
            panel.append(lambda: {"tgt_img": tgt_img, "pseudo_label": labels})
        if not return_visuals:
            return losses, None
        return losses, self._render(panel, batch, Run(iteration, self.device, panel_dtype))

    def _source_pass(self, img: Tensor, label: Tensor, run: Run, losses: dict, panel: list, scaler: Any) -> None:
        """Source CE and the source terms share one encoder pass and one backward."""
        with run.autocast():
            feats = self.student.encode(img)
            logits = self.student.decode(feats)
        out = TermOutput({"loss_src": self.student.loss(logits, label)})
        src = SourcePass(img, label, feats)
        self._backward(self._merge(out, [t.on_source(self.student, src, run) for t in self.terms.values()]),
                       run, losses, panel, scaler)
        panel.append(lambda: {"src_img": img, "src_label": label})

    @torch.no_grad()
    def _pseudo_labels(self, tgt_img: Tensor, run: Run, losses: dict, truth: Tensor | None = None
                       ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Labels, their weight and, when a term reads it (e.g. `uda.mfm.mask_strategy`), the teacher's entropy.
        `truth`, the target crop's labels where the dataset has them, only feeds the logged pseudo-label accuracy:
        it never reaches a loss."""
        set_teacher_mode(self.teacher)
        with run.autocast():
            logits = self.teacher(tgt_img)  # inference path: HRDA slides its detail windows over the crop
        logits = resize_logits(logits.float(), tuple(tgt_img.shape[-2:]))
        labels, weight = pseudo_label(logits, self.cfg.pseudo_threshold)
        losses["pseudo_q"] = float(weight.flatten()[0])  # read before the margins may zero every pixel
        if truth is not None:
            losses.update(pseudo_label_accuracy(logits, labels, truth, self.cfg.pseudo_threshold))
        wants_entropy = any(term.reads_teacher_entropy for term in self.terms.values())
        entropy = normalised_entropy(logits) if wants_entropy else None
        return labels, zero_margins(weight, self.cfg.pseudo_margins), entropy

    def _mixed_pass(self, src_img: Tensor, src_label: Tensor, tgt_img: Tensor, labels: Tensor, weight: Tensor,
                    run: Run, losses: dict, panel: list, scaler: Any) -> None:
        with torch.no_grad():
            mask = class_mix_masks(src_label, batch_wide_classes=self.cfg.mix.batch_wide_classes,
                                   generator=run.generator)
            mixed_img = strong_augment(mix(mask, src_img, tgt_img), self.cfg.mix, run.generator)
            mixed_label = mix(mask, src_label, labels)
            mixed_weight = mix(mask, torch.ones_like(weight), weight)
        with run.autocast():
            feats = self.student.encode(mixed_img)
            out = TermOutput({"loss_mix": self.student.loss(self.student.decode(feats), mixed_label, mixed_weight)})
            mixed = MixedPass(mixed_img, mixed_label, mixed_weight, feats)
            out = self._merge(out, [t.on_mixed(self.student, mixed, run) for t in self.terms.values()])
        panel.append(lambda: {"mixed_img": mixed_img, "mixed_label": mixed_label})
        self._backward(out, run, losses, panel, scaler)

    @staticmethod
    def _merge(first: TermOutput, others: list[TermOutput | None]) -> TermOutput:
        """One backward for the losses of a shared pass; visuals of later terms drawn over earlier ones."""
        losses, visuals = dict(first.losses), [first.visuals]
        for out in (o for o in others if o is not None):
            losses.update(out.losses)
            visuals.append(out.visuals)
        shown = [v for v in visuals if v is not None]
        return TermOutput(losses, (lambda: {k: t for v in shown for k, t in v().items()}) if shown else None)

    @staticmethod
    def _backward(out: TermOutput | None, run: Run, losses: dict, panel: list, scaler: Any) -> None:
        """Check every term before anything reaches the gradients, then one backward for their sum."""
        if out is None:
            return
        for name, value in out.losses.items():
            if not bool(torch.isfinite(value.detach()).all()):
                raise FloatingPointError(f"loss {name} is NaN/inf at iteration {run.iteration}")
            losses[name] = float(value.detach())
        total = sum(out.losses.values())
        (scaler.scale(total) if scaler is not None else total).backward()
        if out.visuals is not None:
            panel.append(out.visuals)

    # ---- panels -----------------------------------------------------------------------------------------------
    def _render(self, panel: list[Visuals], batch: dict[str, Tensor], run: Run) -> dict[str, Tensor]:
        """Panel images on the CPU: what each pass recorded (later ones drawn over earlier ones), the student's
        eval-mode prediction on the target crop and, when the batch has one, the target label."""
        visuals: dict[str, Tensor] = {}
        for render in panel:
            visuals.update(render())
        visuals.update(tgt_img=batch["tgt_img"], tgt_pred=self._student_prediction(batch["tgt_img"], run))
        if "tgt_label" in batch:
            visuals["tgt_label"] = batch["tgt_label"]
        return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in visuals.items()}

    @torch.no_grad()
    def _student_prediction(self, img: Tensor, run: Run) -> Tensor:
        """Eval-mode prediction (running BN statistics), so that asking for a panel never changes training."""
        was_training = self.student.training
        self.student.eval()
        try:
            with run.autocast():
                logits = self.student(img)
        finally:
            self.student.train(was_training)
        return resize_logits(logits.float(), tuple(img.shape[-2:])).argmax(1)
