"""What a resumed run may change, and applying it truthfully.

A resume continues one run: its network, method, data and seed are fixed by the checkpoint, and changing them
would either crash on mismatched weights or silently train something other than what `config.yaml` records. The
schedule and the bookkeeping may change (train longer, evaluate more often, a lower learning rate after a
divergence, another device or data location), and such a change must really take effect: the optimiser state
restored from the checkpoint carries the old `initial_lr`/`weight_decay`, so they are re-applied from the new config.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import torch

from mfmseg.config import Config, config_from_dict, to_dict
from mfmseg.errors import UserError

# Keys (glob patterns) a resume may change; everything else must equal the checkpoint's config.
RESUMABLE = (
    "work_dir", "train.resume", "train.max_iters", "train.*_interval", "train.device", "train.compile",
    "train.grad_checkpointing", "train.deterministic", "train.dist_timeout_s",
    "optim.lr", "optim.head_lr_mult", "optim.weight_decay", "optim.warmup_iters", "optim.warmup_ratio",
    "optim.power", "optim.min_lr", "uda.mfm.lr",
    "data.num_workers", "data.*.root", "data.val.*", "eval.*",
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}"))
    return out


def config_changes(saved: dict, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint value, new value)} for every leaf that differs."""
    old, new = _flatten(to_dict(config_from_dict(saved))), _flatten(to_dict(cfg))  # defaults for keys added since
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_resume_config(saved: dict, cfg: Config, path: object) -> dict[str, tuple[Any, Any]]:
    """The allowed changes, or a one-line refusal naming the first keys a resume cannot change."""
    changes = config_changes(saved, cfg)
    refused = [k for k in changes if not any(fnmatchcase(k, pattern) for pattern in RESUMABLE)]
    if refused:
        shown = "; ".join(f"{k}: {changes[k][0]!r} in the checkpoint, {changes[k][1]!r} now" for k in refused[:3])
        more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
        raise UserError(f"cannot resume {path} with a different {shown}{more}: these keys fix the run (network, "
                        f"method, data, seed); resume with the run's config.yaml, or start a new work_dir= "
                        f"(a resume may change: {', '.join(RESUMABLE[2:])})")
    return changes


def fresh_group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, float]]:
    """The base lr and weight decay of each group as built from the current config (before any state is loaded)."""
    return [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]


def apply_group_settings(optimizer: torch.optim.Optimizer, fresh: list[dict[str, float]]) -> None:
    """After `load_state_dict`: the new config's base lr (the schedule's `initial_lr`) and weight decay win."""
    for group, settings in zip(optimizer.param_groups, fresh):
        group["initial_lr"] = settings["lr"]
        group["weight_decay"] = settings["weight_decay"]
