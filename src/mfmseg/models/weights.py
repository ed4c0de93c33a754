"""Reading weight files and loading them strictly: the two primitives every converter and loader uses.

A leaf (it imports no model): encoders (`models.encoder.load_imagenet_file`), the released-checkpoint loader
(`models.released`) and the engine (resume, export) all load through `load_strict`, so that a file that does not
fit names its missing, unexpected and mis-shaped keys in one line. Files are read with `weights_only=True` (or
safetensors): nothing is unpickled.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

from mfmseg.errors import UserError, describe_load_failure, first_line

T = TypeVar("T")
# what `from_pretrained` looks for in a save_pretrained folder
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A flat tensor dict from .pth/.pt/.bin (weights_only) or .safetensors; unwraps `state_dict`/`model`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read weights {path}: {describe_load_failure(e, path)}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not torch.is_tensor(obj.get(key)):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return obj


def load_strict(module: nn.Module, sd: dict[str, Tensor], what: str) -> None:
    """load_state_dict that names missing/unexpected/mis-shaped keys in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd
              and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise UserError(f"{what} does not fit this model ({'; '.join(parts)}): wrong architecture or class count?")
    module.load_state_dict(sd)


def hf_from_pretrained(load: Callable[[], T], source: str, what: str) -> T:
    """`load()` (a transformers `from_pretrained` of `source`) with one-line errors that tell the three failures
    apart: a folder without weights, a folder whose weights hold pickled code (refused by torch's weights-only
    loader inside transformers), and a Hub id that could not be fetched."""
    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        raise UserError(f"cannot load {what} '{source}': the folder holds no weights ({', '.join(HF_WEIGHT_FILES)});"
                        f" write it with save_pretrained, or give a weight file")
    try:
        return load()
    except pickle.UnpicklingError as e:
        bin_file = folder / "pytorch_model.bin"
        raise UserError(f"cannot load {what} '{source}' (its pytorch_model.bin): "
                        f"{describe_load_failure(e, bin_file if bin_file.is_file() else None)}") from None
    except (OSError, ValueError) as e:
        where = "" if folder.is_dir() else " (no such folder, and the Hub is unreachable or has no such model)"
        raise UserError(f"cannot load {what} '{source}'{where}: {first_line(e)[:160]}") from None
