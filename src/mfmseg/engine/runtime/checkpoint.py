"""Training checkpoints: one atomic file per save, loadable with `weights_only=True`.

A checkpoint holds everything a killed run needs to continue exactly: student, teacher, Rebuilder, optimizer
(its groups carry `initial_lr`, so the stateless schedule needs nothing else), grad-scaler, RNG states, the
resolved config, the package version and the git commit. Only tensors, numbers, strings, lists and dicts go in,
so that nobody has to unpickle code to read it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfmseg import __version__
from mfmseg.errors import UserError, describe_load_failure
from mfmseg.files import atomic_write, temp_path

TRAIN_FORMAT = "mfmseg-train-v1"


def git_commit() -> str:
    """The commit of the source tree this package runs from ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def run_info() -> dict[str, str]:
    return {"version": __version__, "git_commit": git_commit()}


def rng_state() -> dict[str, Any]:
    """Global RNG states as plain tensors/lists (weights_only-safe)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"]["key"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# A parameter beyond this magnitude has diverged even while finite (lr=1e30 gives ~1e31 weights whose next loss is
# NaN): such a state is never saved as a checkpoint to go back to.
MAX_SANE_WEIGHT = 1e6


def state_health(modules: dict[str, torch.nn.Module | None], optimizer: torch.optim.Optimizer) -> str | None:
    """Why this training state must not become a checkpoint (a non-finite tensor, an exploded parameter), or None."""
    for name, module in modules.items():
        if module is None:
            continue
        for key, t in module.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{name}.{key} is not finite"
        for key, p in module.named_parameters():
            if p.numel() and float(p.detach().abs().max()) > MAX_SANE_WEIGHT:
                return f"{name}.{key} reached |w| = {float(p.detach().abs().max()):.1e}"
    for state in optimizer.state.values():
        if any(torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
               for t in state.values()):
            return "the optimizer state is not finite"
    return None


def keep_previous(path: Path, previous: Path) -> None:
    """Make `previous` a copy of `path` (a hard link where possible) before `path` is replaced: `path` always exists,
    and the one before it stays available when the newest turns out to be the start of a divergence."""
    if not path.exists():
        return
    tmp = temp_path(previous)
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system
        atomic_write(previous, lambda t: shutil.copyfile(path, t))
        return
    os.replace(tmp, previous)


def load_torch_file(path: str | Path) -> dict:
    """`torch.load` with weights_only=True and a one-line error for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # corrupt, truncated, not a torch file, or pickled code objects
        raise UserError(f"cannot read checkpoint {path}: {describe_load_failure(e, path)}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not an mfmseg checkpoint (found a {type(obj).__name__})")
    return obj


def require_keys(ckpt: dict, keys: tuple[str, ...], path: str | Path) -> None:
    """A checkpoint missing an entry is damaged or foreign: say which entry, not `KeyError: 'optimizer'`."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise UserError(f"{path} lacks {', '.join(repr(k) for k in missing)}: a damaged or foreign checkpoint")


TRAIN_KEYS = ("config", "iteration", "student", "optimizer", "rng")
# Model sections every mfmseg-train-v1 file has, None when the run has none (readers index them); a method's further
# sections (`UDAStep.state_dict()`) are added under their own keys.
TRAIN_SECTIONS = ("student", "teacher", "rebuilder")


def load_train_checkpoint(path: str | Path) -> dict:
    ckpt = load_torch_file(path)
    if ckpt.get("format") != TRAIN_FORMAT:
        raise UserError(f"{path} is not an mfmseg training checkpoint (format {ckpt.get('format')!r}, "
                        f"expected {TRAIN_FORMAT!r})")
    require_keys(ckpt, TRAIN_KEYS, path)
    return ckpt
