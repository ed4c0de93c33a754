"""The Rebuilder (docs/method.md §2): sizes for any crop and backbone, masking, exact visible features, gradients."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mfmseg.config import MFMConfig
from mfmseg.models.segmentor import weighted_ce
from mfmseg.models.layer_norm import LayerNorm2d
from mfmseg.uda.mfm import mfm_loss
from mfmseg.uda.rebuilder import Rebuilder, level_scale, sincos_pos_embed_2d
from test_uda_helpers import tiny_student

MIT = SimpleNamespace(feature_channels=[64, 128, 320, 512], feature_strides=[4, 8, 16, 32])
DLV2 = SimpleNamespace(feature_channels=[2048], feature_strides=[8])
SMALL = MFMConfig(enabled=True, embed_dim=64, num_heads=4)


def _feats(net, h, w, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, h // s, w // s, generator=g) for c, s in zip(net.feature_channels, net.feature_strides)]


def test_official_config_reproduces_the_official_sizes_at_512():
    mit = Rebuilder.for_segmentor(MIT, (512, 512), MFMConfig(enabled=True))
    assert mit.level_scales == [8, 4, 2, 1] and mit.grid == 16 and mit.pos_embed.shape == (1, 256, 512)
    tokens = torch.zeros(1, 512, 16, 16)
    assert [tuple(p(tokens).shape[-2:]) for p in mit.projectors] == [(128, 128), (64, 64), (32, 32), (16, 16)]
    dl = Rebuilder.for_segmentor(DLV2, (512, 512), MFMConfig(enabled=True))
    assert dl.level_scales == [4] and tuple(dl.projectors[0](tokens).shape) == (1, 2048, 64, 64)


@pytest.mark.parametrize("net", [MIT, DLV2], ids=["mit", "dlv2"])
@pytest.mark.parametrize("train_hw,run_hw", [((512, 512), (512, 512)), ((256, 512), (256, 512)),
                                             ((320, 640), (320, 640)), ((512, 512), (320, 640))])
def test_rebuilt_features_have_the_input_shapes(net, train_hw, run_hw):
    rb = Rebuilder.for_segmentor(net, train_hw, SMALL)
    feats = _feats(net, *run_hw)
    with torch.no_grad():
        rebuilt, mask = rb(feats, generator=torch.Generator().manual_seed(0))
    assert [r.shape for r in rebuilt] == [f.shape for f in feats]
    assert mask.shape == (1, 16, 16) and mask.dtype == torch.bool


def test_level_scale_rounds_to_powers_of_two():
    assert level_scale((128, 128), 16) == 8 and level_scale((10, 20), 16) == 1 and level_scale((80, 160), 16) == 8
    assert level_scale((4, 4), 16) == 1 and level_scale((64, 64), 8) == 8


def test_mask_ratio_is_about_forty_percent():
    rb = Rebuilder([16], [1], embed_dim=32, num_heads=4)
    g = torch.Generator().manual_seed(0)
    ratio = torch.stack([rb.draw_mask(4, g) for _ in range(100)]).float().mean().item()
    assert abs(ratio - 0.4) < 0.01
    assert Rebuilder([16], [1], embed_dim=32, num_heads=4, mask_ratio=0.0).draw_mask(4, g).sum() == 0


def test_visible_positions_keep_features_exactly_and_masked_ones_change():
    rb = Rebuilder.for_segmentor(MIT, (256, 256), SMALL)
    feats = _feats(MIT, 256, 256, b=2)
    with torch.no_grad():
        rebuilt, mask = rb(feats, generator=torch.Generator().manual_seed(1))
    assert 0 < mask.float().mean() < 1
    for f, r in zip(feats, rebuilt):
        m = torch.nn.functional.interpolate(mask[:, None].float(), size=f.shape[-2:], mode="nearest").bool()
        m = m.expand_as(f)
        assert torch.equal(r[~m], f[~m])
        assert not torch.isclose(r[m], f[m]).all()


def test_same_generator_same_mask_and_output():
    rb = Rebuilder.for_segmentor(MIT, (128, 128), SMALL)
    feats = _feats(MIT, 128, 128)
    with torch.no_grad():
        a = rb(feats, generator=torch.Generator().manual_seed(5))
        b = rb(feats, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[1], b[1]) and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))


def _linear(i, o):
    return i * o + o


def _independent_count(channels, scales, d=512, depth=2, mlp=4):
    n = _linear(channels[-1], d) + d  # embed + mask token (pos-embed is a fixed buffer)
    block = 2 * 2 * d + _linear(d, 3 * d) + _linear(d, d) + _linear(d, mlp * d) + _linear(mlp * d, d)
    n += depth * block + 2 * d
    for c, s in zip(channels, scales):
        stage_out = [256, 128, 128][: {1: 0, 2: 1, 4: 2, 8: 3}[s]]
        cin = d
        for k, co in enumerate(stage_out):
            n += (2 * cin if k > 0 else 0) + cin * co * 16 + co  # LN2d between stages, ConvTranspose k4
            cin = co
        n += _linear(cin, c) + 2 * c  # 1×1 conv + LayerNorm2d
    return n


def test_parameter_count_matches_an_independent_count():
    rb = Rebuilder.for_segmentor(MIT, (512, 512), MFMConfig(enabled=True))
    count = sum(p.numel() for p in rb.parameters())
    assert count == _independent_count([64, 128, 320, 512], [8, 4, 2, 1])
    assert count == 14_545_280  # ≈ 6.3 M in the two blocks, 7.9 M in the projectors
    dl = Rebuilder.for_segmentor(DLV2, (512, 512), MFMConfig(enabled=True))
    assert sum(p.numel() for p in dl.parameters()) == _independent_count([2048], [4])


def test_initialisation_embed_xavier_zero_bias_mask_token_small():
    rb = Rebuilder([64, 512], [2, 1])
    assert (rb.embed.bias == 0).all()
    bound = (6 / (512 + 512)) ** 0.5
    assert rb.embed.weight.abs().max() <= bound and rb.embed.weight.std() > bound / 3
    assert 0.01 < rb.mask_token.std().item() < 0.03
    assert rb.blocks[0].norm1.eps == 1e-5 and rb.blocks[0].attn.qkv.bias is not None


def test_sincos_position_embedding_is_maes():
    pe = sincos_pos_embed_2d(8, 2, 3)
    assert pe.shape == (6, 8)
    assert torch.allclose(pe[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))
    # token (row 1, col 2): first half encodes the column, second half the row
    col, row = 2.0, 1.0
    want = [torch.sin(torch.tensor(col)), torch.sin(torch.tensor(col / 100)), torch.cos(torch.tensor(col)),
            torch.cos(torch.tensor(col / 100)), torch.sin(torch.tensor(row)), torch.sin(torch.tensor(row / 100)),
            torch.cos(torch.tensor(row)), torch.cos(torch.tensor(row / 100))]
    assert torch.allclose(pe[5], torch.stack(want), atol=1e-6)


def test_layernorm2d_normalises_channels_per_position():
    x = torch.randn(2, 8, 3, 3) * 5 + 2
    y = LayerNorm2d(8)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 3), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 3, 3), atol=1e-3)


def test_mfm_loss_reaches_encoder_decoder_and_rebuilder():
    model = tiny_student()
    rb = Rebuilder.for_segmentor(model, (64, 64), MFMConfig(enabled=True, embed_dim=32, num_heads=4, grid=4))
    assert rb.level_scales == [4, 2, 1, 1]
    img, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    weight = torch.full((2, 64, 64), 0.7)
    out = mfm_loss(model, rb, model.encode(img), labels, weight, torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(weighted_ce(out.logits, labels, weight).item())
    out.loss.backward()
    for name, module in (("encoder", model.encoder), ("decoder", model.decode_head), ("rebuilder", rb)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum().item() for g in grads) > 0, name
    assert rb.mask_token.grad.abs().sum() > 0


def test_projector_widths_scale_with_the_embedding():
    """embed -> embed/2 -> embed/4 as the official module (512 -> 256 -> 128): a small Rebuilder stays small."""
    rb = Rebuilder.for_segmentor(MIT, (512, 512), MFMConfig(enabled=True, embed_dim=128, num_heads=4))
    widths = [m.out_channels for m in rb.projectors[0] if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [64, 32, 32]
    assert sum(p.numel() for p in rb.parameters()) == _independent_count_widths([64, 128, 320, 512], [8, 4, 2, 1], 128)


def _independent_count_widths(channels, scales, d, depth=2, mlp=4):
    n = _linear(channels[-1], d) + d + depth * (4 * d + _linear(d, 3 * d) + _linear(d, d) + _linear(d, mlp * d)
                                               + _linear(mlp * d, d)) + 2 * d
    for c, s in zip(channels, scales):
        cin = d
        for k, co in enumerate([d // 2, d // 4, d // 4][: {1: 0, 2: 1, 4: 2, 8: 3}[s]]):
            n += (2 * cin if k > 0 else 0) + cin * co * 16 + co
            cin = co
        n += _linear(cin, c) + 2 * c
    return n


def test_masking_without_a_rebuilder_zeroes_masked_positions_and_learns_nothing():
    model = tiny_student("daformer_efflite0")
    rb = Rebuilder.for_segmentor(model, (64, 64), MFMConfig(enabled=True, grid=8, rebuild=False))
    assert sum(p.numel() for p in rb.parameters()) == 0
    feats = model.encode(torch.randn(2, 3, 64, 64))
    rebuilt, mask = rb(feats, generator=torch.Generator().manual_seed(0))
    assert 0 < mask.float().mean() < 1
    for feat, new in zip(feats, rebuilt):
        level = torch.nn.functional.interpolate(mask[:, None].float(), size=feat.shape[-2:], mode="nearest").bool()
        level = level.expand_as(feat)
        assert torch.equal(new[level], torch.zeros_like(new[level])) and torch.equal(new[~level], feat[~level])


@pytest.mark.parametrize("freeze", [False, True])
def test_frozen_decoder_bn_keeps_the_running_statistics_of_the_mfm_pass(freeze):
    model = tiny_student("daformer_efflite0").train()
    rb = Rebuilder.for_segmentor(model, (64, 64), MFMConfig(enabled=True, embed_dim=32, num_heads=4, grid=8))
    before = {k: v.clone() for k, v in model.decode_head.state_dict().items() if "running_" in k}
    feats = model.encode(torch.randn(2, 3, 64, 64))
    labels = torch.randint(0, 19, (2, 64, 64))
    out = mfm_loss(model, rb, feats, labels, None, torch.Generator().manual_seed(0), freeze_decoder_bn=freeze)
    out.loss.backward()
    after = model.decode_head.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    assert unchanged == freeze and before
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(p.grad is not None for p in model.decode_head.parameters())  # still trains the decoder


def _encoder_bn_stats_after_one_step(freeze_encoder_bn: bool, mfm: bool = True) -> dict[str, torch.Tensor]:
    from mfmseg.config import FDConfig, UDAConfig
    from mfmseg.uda.step import UDAStep
    from test_uda_helpers import make_batch

    cfg = UDAConfig(fd=FDConfig(enabled=False), pseudo_threshold=0.05, pseudo_margins=[0, 0, 0, 0],
                    mfm=MFMConfig(enabled=mfm, embed_dim=32, num_heads=4, grid=4,
                                  freeze_encoder_bn=freeze_encoder_bn))
    step = UDAStep(tiny_student("daformer_efflite0"), cfg, crop_hw=(64, 64), device="cpu")
    step.train_step(make_batch(0), 0, generator=torch.Generator().manual_seed(0))
    return {k: v.clone() for k, v in step.student.encoder.state_dict().items() if "running_" in k}


def test_freeze_encoder_bn_removes_exactly_the_mfm_pass_from_the_encoder_statistics():
    """The study's control: with the encoder's BN statistics frozen in the MFM pass, the running statistics after a
    step are exactly those of DACS without MFM (source and mixed passes alone); without it they move."""
    frozen = _encoder_bn_stats_after_one_step(True)
    assert all(torch.equal(frozen[k], v) for k, v in _encoder_bn_stats_after_one_step(False, mfm=False).items())
    moved = _encoder_bn_stats_after_one_step(False)
    assert any(not torch.equal(frozen[k], moved[k]) for k in frozen)
