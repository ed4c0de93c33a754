"""The UDA step and the Rebuilder on a DAFormer and a DeepLab-V2 zoo network (small sizes)."""

from __future__ import annotations

import pytest
import torch

from mfmseg.config import MFMConfig, ModelConfig, UDAConfig
from mfmseg.models import zoo
from mfmseg.uda.rebuilder import Rebuilder
from mfmseg.uda.step import UDAStep
from test_uda_helpers import make_batch

NETS = {"daformer_mitb0": dict(decoder_channels=64), "deeplabv2_r18": {}}


def _model(name: str):
    torch.manual_seed(0)
    return zoo.build_model(ModelConfig(name=name, num_classes=19, **NETS[name]))


@pytest.mark.parametrize("name", list(NETS))
def test_for_segmentor_matches_the_real_feature_sizes(name):
    model = _model(name).eval()
    rb = Rebuilder.for_segmentor(model, (128, 256), MFMConfig(enabled=True, embed_dim=64, num_heads=4, grid=4))
    with torch.no_grad():
        feats = model.encode(torch.randn(1, 3, 128, 256))
        assert [f.shape[1] for f in feats] == model.feature_channels
        assert [(128 // f.shape[2], 256 // f.shape[3]) for f in feats] == [(s, s) for s in model.feature_strides]
        rebuilt, _ = rb(feats, generator=torch.Generator().manual_seed(0))
        assert [r.shape for r in rebuilt] == [f.shape for f in feats]
        assert model.decode(rebuilt).shape == model.decode(feats).shape


@pytest.mark.parametrize("name", list(NETS))
def test_train_step_with_fd_and_mfm_on_a_real_network(name):
    model = _model(name)
    cfg = UDAConfig(pseudo_threshold=0.05, pseudo_margins=[2, 4, 0, 0])
    cfg.mfm = MFMConfig(enabled=True, embed_dim=64, num_heads=4, grid=4, domain="both")
    step = UDAStep(model, cfg, crop_hw=(64, 64), device="cpu")
    batch = make_batch(0, h=64, w=64)
    losses, visuals = step.train_step(batch, 0, generator=torch.Generator().manual_seed(0), return_visuals=True)
    assert {"loss_src", "loss_fd", "loss_mix", "loss_mfm", "loss_mfm_src"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    for part in (model.encoder, model.decode_head, step.terms["mfm"].rebuilder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in step.teacher.parameters())
    assert visuals["mfm_pred"].shape == (2, 64, 64)
