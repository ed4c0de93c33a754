"""Optimiser groups (encoder, head ×10, LayerNorm without decay, Rebuilder at its own lr) and the schedule."""

import pytest
import torch

from mfmseg.config import MFMConfig, ModelConfig, OptimConfig, load_config
from mfmseg.engine.training.optim import apply_lr, build_optimizer, lr_at, param_groups
from mfmseg.models.zoo import build_model
from mfmseg.uda.rebuilder import Rebuilder


@pytest.fixture(scope="module")
def mitb0():
    return build_model(ModelConfig(name="daformer_mitb0", decoder_channels=64))


def _lrs(groups):
    return {g["name"]: (g["lr"], g["weight_decay"], sum(p.numel() for p in g["params"])) for g in groups}


def test_groups_lrs_and_decay(mitb0):
    cfg = OptimConfig()
    rebuilder = Rebuilder.for_segmentor(mitb0, (64, 64), MFMConfig(enabled=True))
    groups = _lrs(param_groups(mitb0, cfg, [("rebuilder", rebuilder, 2e-4)]))
    assert groups["encoder"][:2] == (6e-5, 0.01)
    assert groups["encoder.no_decay"][:2] == (6e-5, 0.0)  # MiT LayerNorms
    assert groups["decode_head"][:2] == pytest.approx((6e-4, 0.01))
    assert groups["rebuilder"][0] == 2e-4, "the Rebuilder must not inherit the head's 10x"
    n_ln = sum(p.numel() for m in mitb0.encoder.modules() if isinstance(m, torch.nn.LayerNorm)
               for p in m.parameters(recurse=False))
    assert groups["encoder.no_decay"][2] == n_ln
    total = sum(n for _, _, n in groups.values())
    assert total == sum(p.numel() for p in mitb0.parameters()) + sum(p.numel() for p in rebuilder.parameters())


def test_schedule_matches_mmcv_poly_with_linear_warmup():
    cfg = OptimConfig()  # warm-up 1500 from 1e-6, poly power 1
    base = 6e-5
    assert lr_at(base, 0, 40000, cfg) == pytest.approx(base * 1e-6)
    assert lr_at(base, 750, 40000, cfg) == pytest.approx(base * (1 - 750 / 40000) * (1 - 0.5 * (1 - 1e-6)))
    assert lr_at(base, 1500, 40000, cfg) == pytest.approx(base * (1 - 1500 / 40000))
    assert lr_at(base, 20000, 40000, cfg) == pytest.approx(base / 2)
    assert lr_at(base, 40000, 40000, cfg) == 0.0
    sgd = OptimConfig(name="sgd", lr=2.5e-4, power=0.9, warmup_iters=0)
    assert lr_at(2.5e-4, 1000, 250000, sgd) == pytest.approx(2.5e-4 * (1 - 1000 / 250000) ** 0.9)


def test_apply_lr_keeps_group_ratios(mitb0):
    cfg = load_config(None).optim
    opt = build_optimizer(param_groups(mitb0, cfg), cfg)
    apply_lr(opt, 10000, 40000, cfg)
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    assert by_name["decode_head"] == pytest.approx(10 * by_name["encoder"])
    assert by_name["encoder"] == pytest.approx(6e-5 * 0.75)
    assert isinstance(build_optimizer(param_groups(mitb0, OptimConfig(name="sgd")), OptimConfig(name="sgd")),
                      torch.optim.SGD)
