"""Metric edge cases (NaN classes, ignore), inference modes (small images, flip), predict values, export formats."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mfmseg.cli import main
from mfmseg.config import Config, to_dict
from mfmseg.data.labels import CITYSCAPES_CLASSES, IMAGENET_MEAN, IMAGENET_STD, TRAIN_ID_TO_CITYSCAPES_ID
from mfmseg.engine.evaluation.export import MODEL_FORMAT, export_model, load_inference_model
from mfmseg.engine.evaluation.inference import infer, slide_inference, whole_inference
from mfmseg.engine.evaluation.metrics import ConfusionMatrix, summarize
from mfmseg.engine.evaluation.predict import collect_inputs, predict_images
from mfmseg.engine.runtime.checkpoint import TRAIN_FORMAT
from mfmseg.errors import UserError
from mfmseg.models.zoo import build_model, count_params


def test_iou_by_hand_with_ignore_and_nan_classes():
    cm = ConfusionMatrix(4)
    label = torch.tensor([0, 0, 0, 1, 1, 255, 255, 7])
    pred = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])  # predictions on ignored pixels must not count
    cm.update(pred, label)
    iou = cm.iou_per_class()
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(1 / 3)
    assert iou[2] == 0.0  # predicted only: a real 0, not NaN
    assert math.isnan(iou[3])  # neither in GT nor (counted) in prediction: skipped like cityscapesscripts
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    r = summarize(cm, ["a", "b", "c", "d"])
    assert r["mIoU"] == pytest.approx(100 * (2 / 3 + 1 / 3 + 0) / 3)
    assert "mIoU16" not in r and r["aAcc"] == pytest.approx(60.0)


def test_confusion_matrix_sums_over_images_not_mean_of_images():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[0, 0], [0, 0]]), torch.tensor([[0, 0], [0, 1]]))
    cm.update(torch.tensor([1]), torch.tensor([1]))
    assert cm.iou_per_class() == pytest.approx([3 / 4, 1 / 2])
    assert int(cm.mat.sum()) == 5
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 3))


def test_summary_of_19_classes_has_the_synthia_means_and_nan_free_table():
    from mfmseg.engine.evaluation.metrics import format_table

    cm = ConfusionMatrix(19)
    cm.update(torch.arange(10), torch.arange(10))  # classes 10..18 absent: NaN, excluded
    r = summarize(cm, list(CITYSCAPES_CLASSES))
    assert r["mIoU"] == pytest.approx(100.0) and r["mIoU16"] == pytest.approx(100.0)
    table = format_table(r)
    assert "n/a" in table and "mIoU13" in table and len(table.splitlines()) == 1 + 19 + 4


class _Pointwise(torch.nn.Module):
    num_classes, size_multiple = 3, 1

    def predict(self, x):
        return torch.stack([x[:, 0], 2 * x[:, 1], -x[:, 2]], 1)


class _ColumnRamp(torch.nn.Module):
    """Logits that depend on the column only: flip averaging must make them constant along the width."""
    num_classes, size_multiple = 2, 1

    def predict(self, x):
        ramp = torch.linspace(0, 1, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
        return torch.cat([ramp, 1 - ramp], 1)


def test_slide_on_an_image_smaller_than_the_window_equals_whole():
    x = torch.randn(2, 3, 20, 30)
    whole = whole_inference(_Pointwise(), x, (40, 60))
    torch.testing.assert_close(slide_inference(_Pointwise(), x, (40, 60), (64, 64), (32, 32)), whole)
    torch.testing.assert_close(infer(_Pointwise(), x, (40, 60), "slide", (16, 16), (7, 9), 5), whole)


def test_flip_averages_with_the_mirrored_prediction():
    x = torch.randn(1, 3, 8, 10)
    plain = infer(_ColumnRamp(), x, (8, 10))
    flipped = infer(_ColumnRamp(), x, (8, 10), flip=True)
    assert not torch.allclose(plain[..., 0], plain[..., -1])
    torch.testing.assert_close(flipped, torch.full_like(flipped, 0.5))
    torch.testing.assert_close(infer(_Pointwise(), x, (8, 10), flip=True), infer(_Pointwise(), x, (8, 10)))
    with pytest.raises(ValueError, match="inference mode"):
        infer(_Pointwise(), x, (8, 10), mode="tiles")


def test_slide_equals_whole_for_a_real_network_when_one_window_covers_the_image():
    cfg = Config()
    cfg.model.name, cfg.model.decoder_channels = "daformer_mitb0", 16
    model = build_model(cfg.model).eval()
    x = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(slide_inference(model, x, (128, 192), (64, 96), (32, 32)),
                               whole_inference(model, x, (128, 192)))


class _ByRedLevel(torch.nn.Module):
    """Class c wherever the image's red channel is 10·c: exact, so predicted PNG values can be checked."""
    num_classes, size_multiple = 19, 1

    def predict(self, x):
        red = x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        levels = torch.arange(19, dtype=x.dtype).view(1, 19, 1, 1) * 10
        return -(red[:, None] - levels).abs()


def test_predict_writes_every_format_with_exact_values_and_relative_paths(tmp_path):
    classes = np.tile(np.repeat(np.arange(19), 2)[None], (6, 1))  # 6 x 38 train ids
    rgb = np.zeros((6, 38, 3), np.uint8)
    rgb[..., 0] = classes * 10
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(rgb).save(tmp_path / "in" / "sub" / "a.png")
    Image.fromarray(rgb).save(tmp_path / "in" / "b.jpg", quality=100)
    cfg = Config()
    cfg.data.val.resize, cfg.data.val.keep_ratio = [38, 6], False
    found = collect_inputs([str(tmp_path / "in")])
    assert [str(r) for _, r in found] == ["b.jpg", str(Path("sub") / "a.png")]
    for fmt in ("trainid", "labelid", "color", "overlay"):
        out = predict_images(_ByRedLevel(), cfg, [str(tmp_path / "in" / "sub" / "*.png")], tmp_path / fmt, fmt)
        assert out == [tmp_path / fmt / "a.png"]
        arr = np.asarray(Image.open(out[0]))
        if fmt == "trainid":
            assert arr.dtype == np.uint8 and arr.shape == (6, 38) and (arr == classes).all()
        elif fmt == "labelid":
            assert arr.shape == (6, 38) and (arr == TRAIN_ID_TO_CITYSCAPES_ID[classes]).all()
            assert arr[0, 0] == 7 and arr[0, -1] == 33  # road, bicycle
        else:
            assert arr.shape == (6, 38, 3)
    with pytest.raises(UserError, match="input not found"):
        collect_inputs([str(tmp_path / "nothing*.png")])
    with pytest.raises(UserError, match="--format"):
        predict_images(_ByRedLevel(), cfg, [str(tmp_path / "in")], tmp_path / "x", "jpeg")


def _fake_train_checkpoint(path: Path, *, rebuilder: bool, teacher: bool) -> torch.nn.Module:
    cfg = Config()
    cfg.model.name, cfg.model.decoder_channels = "daformer_mitb0", 16
    torch.manual_seed(1)
    student = build_model(cfg.model)
    teacher_sd = {k: v + 1 if v.is_floating_point() else v for k, v in student.state_dict().items()}
    torch.save({"format": TRAIN_FORMAT, "config": to_dict(cfg), "iteration": 3, "student": student.state_dict(),
                "teacher": teacher_sd if teacher else None,
                "rebuilder": {"proj.weight": torch.randn(64, 16), "proj.bias": torch.zeros(64)} if rebuilder else None,
                "optimizer": {}, "scheduler": {}, "rng": {}, "version": "0", "git_commit": "x"}, path)
    return student.eval()


def test_export_of_an_mfm_checkpoint_is_the_baseline_network(tmp_path):
    student = _fake_train_checkpoint(tmp_path / "mfm.pth", rebuilder=True, teacher=True)
    _fake_train_checkpoint(tmp_path / "base.pth", rebuilder=False, teacher=False)
    exported = {}
    for name in ("mfm", "base"):
        out = export_model(tmp_path / f"{name}.pth", tmp_path / f"{name}_model.pth")
        exported[name] = torch.load(out, weights_only=True)
        assert exported[name]["format"] == MODEL_FORMAT
        assert set(exported[name]) == {"format", "config", "state_dict", "classes", "palette", "version"}
        assert len(exported[name]["classes"]) == len(exported[name]["palette"]) == 19
    sizes = {n: sum(v.numel() for v in e["state_dict"].values()) for n, e in exported.items()}
    assert sizes["mfm"] == sizes["base"]
    assert not any("rebuild" in k or "teacher" in k or "imnet" in k for k in exported["mfm"]["state_dict"])
    model, cfg = load_inference_model(tmp_path / "mfm_model.pth")
    assert count_params(model) == count_params(student) and cfg.model.name == "daformer_mitb0"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), student.predict(x))
        teacher, _ = load_inference_model(tmp_path / "mfm.pth", which="teacher")
        assert not torch.allclose(teacher.predict(x), student.predict(x))
    with pytest.raises(UserError, match="no 'teacher' weights"):
        load_inference_model(tmp_path / "base.pth", which="teacher")


def test_cli_export_of_a_bad_file_is_one_line_and_nonzero(tmp_path, capsys):
    torch.save({"format": "something-else"}, tmp_path / "other.pth")
    assert main(["export", str(tmp_path / "other.pth"), "--out", str(tmp_path / "m.pth")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "neither an mfmseg" in err and "Traceback" not in err
    assert not (tmp_path / "m.pth").exists()


def _fake_released_dacs(path: Path) -> torch.nn.Module:
    """A DAFormer-repo DACS DeepLab-V2 file: mmseg 0.16 `state_dict` with `model.*` and `ema_model.*` keys."""
    cfg = Config()
    cfg.model.name = "deeplabv2_r18"
    torch.manual_seed(2)
    src = build_model(cfg.model).eval()
    head = {k.replace("aspp.", "aspp_modules.", 1).replace(".weight", ".conv.weight").replace(".bias", ".conv.bias"): v
            for k, v in src.decode_head.state_dict().items()}
    sd = {}
    for prefix, shift in (("model", 0.0), ("ema_model", 0.5)):
        sd.update({f"{prefix}.backbone.{k}": v + shift if v.is_floating_point() else v
                   for k, v in src.encoder.state_dict().items()})
        sd.update({f"{prefix}.decode_head.{k}": v + shift for k, v in head.items()})
    torch.save({"state_dict": sd, "meta": {"iter": 40000}}, path)
    return src


@pytest.mark.slow
def test_released_checkpoint_evaluates_and_exports_with_a_config(tmp_path):
    import yaml

    src = _fake_released_dacs(tmp_path / "dacs_release.pth")
    cfg = Config()
    cfg.model.name = "deeplabv2_r18"
    with pytest.raises(UserError, match="released DAFormer/HRDA/MIC checkpoint without a config"):
        load_inference_model(tmp_path / "dacs_release.pth")
    model, _ = load_inference_model(tmp_path / "dacs_release.pth", config=cfg)
    teacher, _ = load_inference_model(tmp_path / "dacs_release.pth", which="teacher", config=cfg)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), src.predict(x))
        assert not torch.allclose(teacher.predict(x), src.predict(x))
    (tmp_path / "net.yaml").write_text(yaml.safe_dump({"model": {"name": "deeplabv2_r18"}}))
    assert main(["export", str(tmp_path / "dacs_release.pth"), "--config", str(tmp_path / "net.yaml"), "--out",
                 str(tmp_path / "m.pth")]) == 0
    exported, _ = load_inference_model(tmp_path / "m.pth")
    with torch.no_grad():
        torch.testing.assert_close(exported.predict(x), src.predict(x))


def test_absent_classes_match_the_official_evaluator(tmp_path):
    """Classes absent from GT and prediction are NaN and skipped; a class predicted only scores 0: as official."""
    import copy

    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs

    from mfmseg.data.labels import CITYSCAPES_ID_TO_TRAIN_ID, SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES

    rng = np.random.default_rng(3)
    cm, preds, gts = ConfusionMatrix(19), [], []
    for i in range(2):
        gt = rng.choice(np.array([7, 8, 26, 0, 3], np.uint8), size=(40, 60))  # road, sidewalk, car + void ids
        gt_train = np.vectorize(lambda v: CITYSCAPES_ID_TO_TRAIN_ID.get(int(v), 255))(gt)
        pred_train = np.where(rng.random((40, 60)) < 0.7, gt_train, rng.choice([0, 1, 2, 13], size=(40, 60)))
        pred_train[gt_train == 255] = 5  # pole, predicted on void pixels only, must stay NaN (not 0)
        pred_train = np.where(pred_train == 255, 0, pred_train)
        gt_path, pred_path = tmp_path / f"c_000000_{i:06d}_gtFine_labelIds.png", tmp_path / f"p{i}.png"
        Image.fromarray(gt).save(gt_path)
        Image.fromarray(TRAIN_ID_TO_CITYSCAPES_ID[pred_train].astype(np.uint8)).save(pred_path)
        preds.append(str(pred_path))
        gts.append(str(gt_path))
        cm.update(torch.from_numpy(pred_train), torch.from_numpy(gt_train))
    args = copy.copy(cs.args)
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    args.exportFile, args.avgClassSize = str(tmp_path / "cs.json"), {}
    official = cs.evaluateImgLists(preds, gts, args)
    ours = summarize(cm, list(CITYSCAPES_CLASSES))
    nan_classes = [n for n, v in ours["per_class_iou"].items() if math.isnan(v)]
    assert len(nan_classes) == 19 - 4 and "pole" in nan_classes and ours["per_class_iou"]["building"] == 0
    for name, iou in ours["per_class_iou"].items():
        ref = official["classScores"][name]
        assert (math.isnan(iou) and math.isnan(ref)) or abs(iou / 100 - ref) < 1e-6, name
    assert abs(ours["mIoU"] / 100 - official["averageScoreClasses"]) < 1e-6
    for key, subset in (("mIoU16", SYNTHIA_16_CLASSES), ("mIoU13", SYNTHIA_13_CLASSES)):
        ref = [official["classScores"][CITYSCAPES_CLASSES[c]] for c in subset]
        ref = [v for v in ref if not math.isnan(v)]
        assert abs(ours[key] / 100 - sum(ref) / len(ref)) < 1e-6
