"""EMA, pseudo-labels, ClassMix, augmentation, FD and MIC on hand-made numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mfmseg.config import MixConfig
from mfmseg.uda.ema import ema_coefficient, ema_update, make_teacher
from mfmseg.uda.fd import downscale_label_ratio, feature_distance
from mfmseg.models.segmentor import weighted_ce
from mfmseg.uda.mic import block_mask, mask_image
from mfmseg.uda.mixing import (blur_kernel_size, class_mix_masks, color_jitter, gaussian_blur, hsv_to_rgb, mix,
                               rgb_to_hsv, strong_augment)
from mfmseg.uda.pseudo import pseudo_label, zero_margins
from test_uda_helpers import tiny_student


# ---- EMA ------------------------------------------------------------------------------------------------------
def test_ema_coefficient_follows_the_reference_schedule():
    assert ema_coefficient(0, 0.999) == 0.0
    assert ema_coefficient(1, 0.999) == 0.5
    assert ema_coefficient(9, 0.99) == pytest.approx(0.9)
    assert ema_coefficient(10_000, 0.99) == 0.99


def test_ema_update_hand_computed_and_buffers_untouched():
    student, teacher = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([1.0, 2.0]))
        student.weight.copy_(torch.tensor([3.0, -2.0]))
        teacher.running_mean.fill_(7.0)
        student.running_mean.fill_(-1.0)
    a = ema_update(teacher, student, iteration=3, alpha=0.99)  # a = min(1 - 1/4, 0.99) = 0.75
    assert a == 0.75
    assert torch.allclose(teacher.weight, torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * -2]))
    assert torch.equal(teacher.running_mean, torch.full((2,), 7.0))
    ema_update(teacher, student, iteration=0, alpha=0.99)  # a = 0: a plain copy
    assert torch.equal(teacher.weight, student.weight)


def test_make_teacher_is_frozen_bn_train_dropout_off():
    student = tiny_student()  # MiT-B0: BN in the head, dropout, drop-path
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    kinds = {type(m).__name__: m.training for m in teacher.modules()}
    assert kinds["BatchNorm2d"] is True and kinds["Dropout"] is False and kinds["Dropout2d"] is False
    assert kinds["SegformerDropPath"] is False
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher(x), teacher(x))  # no dropout noise


# ---- pseudo-labels --------------------------------------------------------------------------------------------
def test_pseudo_label_weight_is_one_batch_scalar_and_margins_zero():
    logits = torch.zeros(2, 3, 4, 5)
    logits[:, 1] = 10.0  # confident class 1 everywhere (p ≈ 0.99991)
    logits[0, :, 0, :] = 0.0  # first row of image 0: uniform (p = 1/3), below τ
    logits[1, 2, :, 4] = 10.0  # last column of image 1: a tie 1/2, below τ
    labels, weight = pseudo_label(logits, 0.968, [1, 1, 0, 2])
    confident = 40 - 5 - 4
    q = confident / 40
    assert labels[0, 1, 0] == 1 and labels.shape == (2, 4, 5)
    assert torch.allclose(weight[:, 1:3, :3], torch.full((2, 2, 3), q))
    assert (weight[:, 0] == 0).all() and (weight[:, -1] == 0).all() and (weight[:, :, -2:] == 0).all()
    _, no_margin = pseudo_label(logits, 0.968, [0, 0, 0, 0])
    assert torch.allclose(no_margin, torch.full((2, 4, 5), q))


def test_weighted_ce_averages_over_all_pixels_like_mmseg():
    logits = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    assert weighted_ce(logits, labels).item() == pytest.approx(math.log(2) / 2)
    w = torch.tensor([[[0.5, 1.0]]])
    assert weighted_ce(logits, labels, w).item() == pytest.approx(0.5 * math.log(2) / 2)


# ---- ClassMix ---------------------------------------------------------------------------------------------------
def test_class_mix_masks_take_half_the_classes_rounding_up_and_skip_ignore():
    lab = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]], [[5, 5, 5, 5], [6, 6, 6, 6]]])
    g = torch.Generator().manual_seed(0)
    masks = class_mix_masks(lab, generator=g)
    for i, n_expected in ((0, 2), (1, 1)):  # 3 classes -> 2, 2 classes -> 1
        picked = torch.unique(lab[i][masks[i]])
        assert len(picked) == n_expected and 255 not in picked.tolist()
        for c in picked:  # a chosen class is pasted whole
            assert masks[i][lab[i] == c].all()


def test_batch_wide_quirk_draws_from_the_whole_batch():
    lab = torch.stack([torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 7)])
    sizes = {int(class_mix_masks(lab, batch_wide_classes=True, generator=torch.Generator().manual_seed(s))[0].sum())
             for s in range(20)}
    assert sizes == {0, 16}  # one of the two batch classes: image 0 sometimes gets the class it lacks
    per_image = {int(class_mix_masks(lab, generator=torch.Generator().manual_seed(s))[0].sum()) for s in range(20)}
    assert per_image == {16}


def test_mix_images_labels_weights():
    mask = torch.tensor([[[True, False], [False, True]]])
    src_lab, tgt_lab = torch.tensor([[[1, 2], [3, 4]]]), torch.tensor([[[9, 9], [9, 9]]])
    assert mix(mask, src_lab, tgt_lab).tolist() == [[[1, 9], [9, 4]]]
    w = torch.full((1, 2, 2), 0.3)
    assert torch.allclose(mix(mask, torch.ones_like(w), w), torch.tensor([[[1.0, 0.3], [0.3, 1.0]]]))
    img = mix(mask, torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    assert img[0, :, 0, 0].tolist() == [1, 1, 1] and img[0, :, 0, 1].tolist() == [0, 0, 0]


# ---- augmentation -------------------------------------------------------------------------------------------------
def test_blur_kernel_is_about_ten_percent_and_odd():
    assert blur_kernel_size(512) == 51 and blur_kernel_size(1024) == 103 and blur_kernel_size(64) == 7
    assert blur_kernel_size(50) == 5 and blur_kernel_size(10) == 1


def test_hsv_round_trip():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5)


def test_jitter_and_blur_probabilities_and_effect():
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    changed_j = sum(not torch.equal(color_jitter(img, 0.2, 0.8, g), img) for _ in range(200))
    changed_b = sum(not torch.equal(gaussian_blur(img, 0.5, g), img) for _ in range(200))
    assert 140 <= changed_j <= 180 and 80 <= changed_b <= 120
    const = torch.full((1, 3, 20, 20), 0.5)  # blur preserves a constant image (normalised kernel)
    assert torch.allclose(gaussian_blur(const, 1.0, g), const, atol=1e-6)
    out = strong_augment(img, MixConfig(), torch.Generator().manual_seed(3))
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert torch.equal(out, strong_augment(img, MixConfig(), torch.Generator().manual_seed(3)))


# ---- FD ---------------------------------------------------------------------------------------------------------
def test_downscale_label_ratio_majority_and_threshold():
    lab = torch.tensor([[[13, 13, 0, 0], [13, 1, 1, 1], [255, 255, 2, 2], [255, 255, 2, 2]]])
    out = downscale_label_ratio(lab, 2, 0.75, 19)
    assert out.tolist() == [[[13, 255], [255, 2]]]  # 3/4 car kept; 2/4 road dropped; all-ignore -> 255


def test_feature_distance_on_thing_cells_only_and_zero_without():
    f_s = torch.zeros(1, 2, 2, 2, requires_grad=True)
    f_i = torch.zeros(1, 2, 2, 2)
    f_i[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5 on the car cell
    f_i[0, :, 1, 1] = 100.0  # far away on a road cell: not counted
    lab = torch.tensor([[[13] * 4] * 4])
    lab[0, :, 2:] = 0
    lab[0, 2:, :2] = 0
    d = feature_distance(f_s, f_i, lab, [13], 0.75, 19)
    assert d.item() == pytest.approx(5.0)
    zero = feature_distance(f_s, f_i, torch.zeros(1, 4, 4, dtype=torch.long), [13], 0.75, 19)
    assert zero.item() == 0.0 and torch.isfinite(zero)
    zero.backward()
    assert f_s.grad is not None and (f_s.grad == 0).all()


# ---- MIC --------------------------------------------------------------------------------------------------------
def test_mic_block_mask_ratio_and_blocks():
    g = torch.Generator().manual_seed(0)
    m = block_mask(8, 512, 512, 32, 0.7, g)
    assert m.shape == (8, 1, 512, 512)
    assert 0.27 <= m.mean().item() <= 0.33
    blocks = m[:, :, ::32, ::32]
    assert torch.equal(m, blocks.repeat_interleave(32, 2).repeat_interleave(32, 3))
    img = torch.randn(1, 3, 64, 64)
    masked = mask_image(img, 32, 0.7, torch.Generator().manual_seed(1))
    assert ((masked == 0) | (masked == img)).all()


def test_full_image_margins_variant():
    weight = zero_margins(torch.ones(1, 1024, 2048), [30, 240, 30, 30])  # HRDA/MIC on full Cityscapes frames
    assert weight.sum().item() == (1024 - 270) * (2048 - 60)
    assert weight[0, 30, 30] == 1 and weight[0, 29, 100] == 0 and weight[0, 1024 - 240, 100] == 0
    assert weight[0, 500, 2048 - 30] == 0 and weight[0, 500, 2048 - 31] == 1


def test_jitter_stays_in_the_valid_pixel_range():
    from mfmseg.uda.mixing import denormalize01, renormalize01
    img01 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    img = renormalize01(img01)
    assert torch.allclose(denormalize01(img), img01, atol=1e-5)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        out = denormalize01(color_jitter(img, 0.2, 1.0, g))
        assert out.min() >= -1e-5 and out.max() <= 1 + 1e-5
    assert torch.equal(color_jitter(img, 0.0, 1.0, g), img)
