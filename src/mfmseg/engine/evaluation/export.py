"""Inference-only model files, and loading a model for inference from either kind of file.

An exported file holds the student's weights, the resolved config and the class names/colours: no teacher, no
Rebuilder, no frozen ImageNet copy, no optimiser. MFM therefore costs nothing at inference: the exported network is
exactly the baseline network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mfmseg import __version__
from mfmseg.config import Config, config_from_dict, to_dict
from mfmseg.engine.evaluation.evaluate import class_names, class_palette
from mfmseg.engine.runtime.checkpoint import TRAIN_FORMAT, atomic_torch_save, load_torch_file, require_keys
from mfmseg.errors import ONNX_MODEL, UserError, what_file_is
from mfmseg.models.released import load_released_checkpoint
from mfmseg.models.weights import load_strict
from mfmseg.models.zoo import build_model

MODEL_FORMAT = "mfmseg-model-v1"
RELEASED_WHICH = {"student": "model", "teacher": "ema_model"}


def _is_released(ckpt: dict) -> bool:
    """mmseg 0.16 files of DAFormer/HRDA/MIC/DACS: no format tag, `state_dict` with `model.*`/`ema_model.*`."""
    sd = ckpt.get("state_dict")
    return ("format" not in ckpt and isinstance(sd, dict)
            and any(str(k).startswith(("model.", "ema_model.")) for k in sd))


def _check_which(which: str) -> None:
    if which not in RELEASED_WHICH:
        raise UserError(f"which must be 'student' or 'teacher', got '{which}'")


def _student_and_config(ckpt: dict, path: str | Path, which: str = "student") -> tuple[dict, Config]:
    fmt = ckpt.get("format")
    if fmt == MODEL_FORMAT:
        if which != "student":  # as the .onnx path: an export would otherwise score its student as "the teacher"
            raise UserError(f"{path} is an exported model: it holds the student only, --which {which} does not "
                            f"apply (give the training checkpoint, latest.pth, for the teacher)")
        require_keys(ckpt, ("state_dict", "config"), path)
        return ckpt["state_dict"], config_from_dict(ckpt["config"], str(path))
    if fmt == TRAIN_FORMAT:
        require_keys(ckpt, ("config",), path)
        if ckpt.get(which) is None:
            raise UserError(f"{path} has no '{which}' weights (a source-only run has no teacher)")
        return ckpt[which], config_from_dict(ckpt["config"], str(path))
    raise UserError(f"{path} is neither an mfmseg training checkpoint nor an exported model (format {fmt!r})")


def _load_released(path: str | Path, which: str, config: Config | None) -> tuple[nn.Module, Config]:
    """Released files carry no config: the architecture comes from `config` (a preset naming the same network)."""
    if config is None:
        raise UserError(f"{path} is a released DAFormer/HRDA/MIC checkpoint without a config: pass --config "
                        f"with the preset of its network (e.g. gta2cs_daformer_mitb5)")
    config.model.pretrained = None
    model = load_released_checkpoint(path, build_model(config.model), which=RELEASED_WHICH[which])
    return model, config


def load_inference_model(path: str | Path, device: str | torch.device = "cpu", which: str = "student",
                         config: Config | None = None) -> tuple[nn.Module, Config]:
    """(Segmentor in eval mode, its Config) from a training checkpoint, an exported model or (with `config`) a
    released mmseg checkpoint, whose `model` / `ema_model` are our student / teacher. An `.onnx` export gives an
    `OnnxSegmentor` (onnxruntime) with the same `predict` contract, so predict/evaluate run it unchanged."""
    _check_which(which)
    if Path(path).suffix.lower() == ".onnx":
        from mfmseg.engine.evaluation.onnx_runtime import load_onnx_model  # onnxruntime is optional: import on use

        return load_onnx_model(path, str(device), which)
    if Path(path).suffix == ".safetensors":  # only released weights come as safetensors: ours are torch.save'd
        return _to_eval(*_load_released(path, which, config), device)
    ckpt = load_torch_file(path)
    if _is_released(ckpt):
        model, cfg = _load_released(path, which, config)
    else:
        state, cfg = _student_and_config(ckpt, path, which)
        cfg.model.pretrained = None  # the weights come from the file, not from ImageNet
        model = build_model(cfg.model)
        load_strict(model, state, f"checkpoint {path}")
    return _to_eval(model, cfg, device)


def _to_eval(model: nn.Module, cfg: Config, device: str | torch.device) -> tuple[nn.Module, Config]:
    return model.to(device).eval(), cfg


def _not_an_export(path: Path) -> str | None:
    """None when `path` is a file `export` writes (an mfmseg model export, .pth or .onnx), which it may replace;
    else what the file is."""
    kind = what_file_is(path)
    if kind == ONNX_MODEL:
        with open(path, "rb") as f:  # the metadata follows the graph: the end of the file
            f.seek(max(0, path.stat().st_size - 2**20))
            return None if b"mfmseg_format" in f.read() else "an ONNX model that mfmseg did not export"
    if kind is not None:
        return kind.split(",")[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # reads the tensors lazily
    except Exception:  # unreadable, legacy or foreign: whatever torch raises, not an export of ours
        return "a file that is not an mfmseg model export"
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt == MODEL_FORMAT:
        return None
    if fmt == TRAIN_FORMAT:
        return "a training checkpoint (optimizer, teacher, RNG state: what train.resume needs)"
    return "a PyTorch file that is not an mfmseg model export"


def check_export_out(checkpoint: str | Path, out: str | Path) -> None:
    """Before any work: refuse an `--out` that export would destroy and did not write, the input itself (as
    `cp a a` is refused) or an existing file that is not a model export, above all a training checkpoint, whose
    optimizer, teacher and RNG state the inference file would replace for good. A previous export may be
    replaced."""
    out = Path(out)
    if not out.is_file():
        return
    if Path(checkpoint).is_file() and os.path.samefile(checkpoint, out):
        raise UserError(f"--out {out} is the input checkpoint itself: export writes a new file, choose another --out")
    kind = _not_an_export(out)
    if kind is not None:
        raise UserError(f"--out {out} exists and is {kind}: export would replace it, choose another --out")


def export_model(checkpoint: str | Path, out: str | Path, which: str = "student",
                 config: Config | None = None) -> Path:
    """Inference-only file (student weights, config, class names/colours), written atomically."""
    model, cfg = load_inference_model(checkpoint, "cpu", which, config)  # validates the weights
    return save_inference_model(model, cfg, out)


def save_inference_model(model: nn.Module, cfg: Config, out: str | Path) -> Path:
    """The inference-only file of a model in memory, written atomically (also the trainer's best.pth and kept
    checkpoints: what `predict`, `evaluate` and `export` read)."""
    atomic_torch_save({"format": MODEL_FORMAT, "config": to_dict(cfg), "state_dict": model.state_dict(),
                       "classes": class_names(cfg.model.num_classes, cfg.data.classes),
                       "palette": class_palette(cfg.model.num_classes, cfg.data.classes),
                       "version": __version__}, Path(out))
    return Path(out)
