"""Inference-only model files, and loading a model for inference from either kind of file.

An exported file holds the student's weights, the resolved config and the class names/colours: no teacher, no
Rebuilder, no frozen ImageNet copy, no optimiser. MFM therefore costs nothing at inference: the exported network is
exactly the baseline network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mfmseg import __version__
from mfmseg.config import Config, config_from_dict, to_dict
from mfmseg.data.labels import CITYSCAPES_PALETTE
from mfmseg.engine.checkpoint import TRAIN_FORMAT, atomic_torch_save, load_torch_file
from mfmseg.engine.evaluate import class_names
from mfmseg.errors import UserError
from mfmseg.models.weights import load_strict
from mfmseg.models.zoo import build_model

MODEL_FORMAT = "mfmseg-model-v1"


def _student_and_config(path: str | Path, which: str = "student") -> tuple[dict, Config]:
    ckpt = load_torch_file(path)
    fmt = ckpt.get("format")
    if fmt == MODEL_FORMAT:
        return ckpt["state_dict"], config_from_dict(ckpt["config"], str(path))
    if fmt == TRAIN_FORMAT:
        if which not in ("student", "teacher") or ckpt.get(which) is None:
            raise UserError(f"{path} has no '{which}' weights (a source-only run has no teacher)")
        return ckpt[which], config_from_dict(ckpt["config"], str(path))
    raise UserError(f"{path} is neither an mfmseg training checkpoint nor an exported model (format {fmt!r})")


def load_inference_model(path: str | Path, device: str | torch.device = "cpu",
                         which: str = "student") -> tuple[nn.Module, Config]:
    """(Segmentor in eval mode, its Config) from a training checkpoint or an exported model."""
    state, cfg = _student_and_config(path, which)
    cfg.model.pretrained = None  # the weights come from the file, not from ImageNet
    model = build_model(cfg.model)
    load_strict(model, state, f"checkpoint {path}")
    return model.to(device).eval(), cfg


def export_model(checkpoint: str | Path, out: str | Path, which: str = "student") -> Path:
    state, cfg = _student_and_config(checkpoint, which)
    model, _ = load_inference_model(checkpoint, "cpu", which)  # validates the weights against the architecture
    atomic_torch_save({"format": MODEL_FORMAT, "config": to_dict(cfg), "state_dict": model.state_dict(),
                       "classes": class_names(cfg.model.num_classes),
                       "palette": [list(c) for c in CITYSCAPES_PALETTE][: cfg.model.num_classes],
                       "version": __version__}, Path(out))
    return Path(out)
