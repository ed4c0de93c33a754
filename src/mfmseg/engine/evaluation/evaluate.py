"""Evaluate a segmentor on a labelled dataset: confusion matrix over all images -> per-class IoU and mIoUs."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mfmseg.config import EvalConfig
from mfmseg.data.labels import CLASS_SETS
from mfmseg.engine.evaluation.inference import infer_labels
from mfmseg.engine.evaluation.metrics import ConfusionMatrix, summarize
from mfmseg.engine.runtime.distributed import DistContext
from mfmseg.engine.runtime.numerics import autocast
from mfmseg.errors import UserError


def class_names(num_classes: int, classes: str = "cityscapes") -> list[str]:
    """The names of the run's class set (`data.classes`) when the model has its class count, else class_<i>."""
    names = CLASS_SETS[classes].names
    return list(names) if len(names) == num_classes else [f"class_{i}" for i in range(num_classes)]


def class_palette(num_classes: int, classes: str = "cityscapes") -> list[list[int]]:
    """RGB colours per train id: the class set's, padded with the Cityscapes palette for a folder dataset's ids."""
    palette = [list(c) for c in CLASS_SETS[classes].palette]
    if len(palette) != num_classes:
        palette = [list(c) for c in CLASS_SETS["cityscapes"].palette]
    return palette[:num_classes]


@torch.no_grad()
def evaluate(model: nn.Module, dataset, cfg: EvalConfig, *, device: torch.device | str = "cpu",
             progress: bool = True, ctx: DistContext = DistContext(), autocast_dtype: torch.dtype | None = None,
             classes: str = "cityscapes") -> dict:
    """{"mIoU", "mIoU16", "mIoU13", "aAcc", "per_class_iou"} in percent; the model is run in eval mode, under
    autocast in `autocast_dtype` when given (`numerics.eval_autocast_dtype`; logits are float before the argmax).

    Under several ranks (`ctx`), every rank evaluates images rank, rank + world, ... and the confusion matrices
    (integer counts) are summed: every rank is busy, none waits in a collective for a whole validation pass, and
    the result equals a one-rank evaluation exactly. Every rank must call it."""
    if not getattr(dataset, "has_labels", True):
        raise UserError(f"{dataset.root} has no labels to evaluate against: without target labels, training logs "
                        f"label-free metrics instead (docs/label_free.md)")
    checked_for = getattr(dataset, "num_classes", 255)  # 255: the labels are not checked against a class count
    if checked_for not in (255, model.num_classes):  # one class count: the confusion matrix would drop the rest
        raise UserError(f"the model predicts {model.num_classes} classes but the labels of "
                        f"{getattr(dataset, 'root', 'the dataset')} are read for {checked_for} (model.num_classes of "
                        f"the config, e.g. --config): evaluate with a config of the model's class set, or without "
                        f"--config")
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(model.num_classes, device)
    amp = autocast(device, autocast_dtype)
    try:
        for i in tqdm(range(ctx.rank, len(dataset), ctx.world_size), desc="evaluate", disable=not progress,
                      unit="img"):
            sample = dataset[i]
            img = sample["img"][None].to(device)
            label = sample["label"].to(device)
            with amp:
                pred = infer_labels(model, img, tuple(label.shape[-2:]), cfg.mode, cfg.window, cfg.stride,
                                    cfg.batch_size)
            cm.update(pred[0], label)
    finally:
        model.train(was_training)
    if ctx.enabled:
        dist.all_reduce(cm.mat)
    return summarize(cm, class_names(model.num_classes, classes))
