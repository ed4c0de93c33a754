"""Optimiser parameter groups and the warm-up + poly learning-rate schedule of the DAFormer family.

Groups (docs/method.md §3): encoder at the base lr (× `encoder_lr_mult`, 1 by default; layer-wise decayed for encoders
that number their layers: `layerwise_groups`); decode head (and HRDA's scale attention) at `head_lr_mult` × base;
LayerNorm parameters without weight decay (the reference's `norm` custom key matches exactly MiT's LayerNorms:
BatchNorms are named `bn` there and keep their decay); every module the UDA method trains besides the student (the
MFM Rebuilder at `uda.mfm.lr`) in a group of its own at the lr the method gives it, so it never inherits the head's
10× by accident.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from mfmseg.config import OptimConfig
from mfmseg.models.layer_norm import LayerNorm2d


def _split_no_decay(modules: list[nn.Module], norm_no_decay: bool
                    ) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters of `modules`."""
    no_decay_ids: set[int] = set()
    if norm_no_decay:
        for m in (sub for module in modules for sub in module.modules()):
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, LayerNorm2d)):
                no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay = [], []
    for p in (p for module in modules for p in module.parameters()):
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    return decay, no_decay


def param_groups(student: nn.Module, cfg: OptimConfig, extra: Sequence[tuple[str, nn.Module, float]] = ()
                 ) -> list[dict]:
    """Named groups: each carries `name` and its own `lr` so that tests and logs can see what got what.
    `extra`: (name, module, lr) of what else is trained (`uda.step.UDAStep.param_parts()`)."""
    groups = layerwise_groups(student.encoder, cfg) if hasattr(student.encoder, "layer_id") else []
    # every head (the decode head; HRDA's scale attention too, as the reference's `head` lr key matches it) ×10
    heads = [module for name, module in student.named_children() if name != "encoder"]
    parts: list[tuple[str, list[nn.Module], float]] = [] if groups else [
        ("encoder", [student.encoder], cfg.lr * cfg.encoder_lr_mult)]
    parts.append(("decode_head", heads, cfg.lr * cfg.head_lr_mult))
    parts += [(name, [module], lr) for name, module, lr in extra]
    for name, modules, lr in parts:
        decay, no_decay = _split_no_decay(modules, cfg.norm_no_decay)
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            groups.append({"name": f"{name}.no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    _check_covers_everything(student, groups)
    return groups


def layerwise_groups(encoder: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Layer-wise lr decay for encoders that number their layers (ViTs: `layer_id(name)` in 0..`num_layers`,
    `no_weight_decay()` names), as BEiT/DINOv2 fine-tuning does: a pretrained early layer holds generic features
    that a small target-domain signal should move least. Layer i gets lr·encoder_lr_mult·layer_decay^(num_layers-i);
    groups `encoder.layer<i>[.no_decay]`, the top layer first (so `param_groups[0]` shows the encoder's own lr).
    No weight decay on norms (`norm_no_decay`) and on what the encoder names (tokens, position embeddings)."""
    _, norms = _split_no_decay([encoder], cfg.norm_no_decay)
    skip, norm_ids = set(encoder.no_weight_decay()), {id(p) for p in norms}
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            key = (encoder.layer_id(name), id(p) in norm_ids or name in skip)
            buckets.setdefault(key, []).append(p)
    groups = []
    for (layer, no_decay), params in sorted(buckets.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        lr = cfg.lr * cfg.encoder_lr_mult * cfg.layer_decay ** (encoder.num_layers - layer)
        groups.append({"name": f"encoder.layer{layer}" + (".no_decay" if no_decay else ""), "params": params,
                       "lr": lr, "weight_decay": 0.0 if no_decay else cfg.weight_decay})
    return groups


def _check_covers_everything(student: nn.Module, groups: Iterable[dict]) -> None:
    """A parameter outside encoder/decode_head would silently never train: refuse that."""
    grouped = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in student.named_parameters() if p.requires_grad and id(p) not in grouped]
    if missing:
        raise RuntimeError(f"parameters outside encoder/decode_head would not be optimised: {missing[:5]}")


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(base_lr: float, iteration: int, max_iters: int, cfg: OptimConfig) -> float:
    """mmcv's poly schedule with linear warm-up (the DAFormer family's `poly10warm`).

    poly: (base - min_lr)·(1 - it/max)^power + min_lr; warm-up then scales it by 1 - (1 - it/warmup)·(1 - ratio).
    """
    progress = min(iteration, max_iters) / max(max_iters, 1)
    lr = (base_lr - cfg.min_lr) * (1.0 - progress) ** cfg.power + cfg.min_lr
    if iteration < cfg.warmup_iters:
        lr *= 1.0 - (1.0 - iteration / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
    return lr


def apply_lr(optimizer: torch.optim.Optimizer, iteration: int, max_iters: int, cfg: OptimConfig) -> None:
    """Set every group's lr for `iteration` from its `initial_lr`: stateless, so a resumed run needs no scheduler."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = lr_at(group["initial_lr"], iteration, max_iters, cfg)
