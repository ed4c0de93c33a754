"""Evaluation against the official Cityscapes evaluator, inference modes, predict formats, export (zero overhead)."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mfmseg.cli import main
from mfmseg.config import ModelConfig
from mfmseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID, TRAIN_ID_TO_CITYSCAPES_ID
from mfmseg.engine.evaluation.export import export_model, load_inference_model
from mfmseg.engine.evaluation.inference import slide_inference, whole_inference
from mfmseg.engine.evaluation.metrics import ConfusionMatrix, summarize
from mfmseg.engine.runtime.checkpoint import TRAIN_FORMAT
from mfmseg.errors import UserError
from mfmseg.models.zoo import build_model


def _official(pred_files, gt_files, tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs

    args = copy.copy(cs.args)
    args.evalInstLevelScore = False
    args.quiet = True
    args.JSONOutput = False
    args.exportFile = str(tmp_path / "cs.json")
    args.avgClassSize = {}
    result = cs.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files], args)
    return result


def test_miou_equals_the_official_cityscapes_evaluator(tmp_path):
    rng = np.random.default_rng(0)
    label_ids = np.array(list(CITYSCAPES_ID_TO_TRAIN_ID) + [0, 1, 4], np.uint8)  # incl. ids ignored in eval
    cm = ConfusionMatrix(19)
    preds, gts = [], []
    for i in range(4):
        gt = rng.choice(label_ids, size=(64, 96))
        gt[:20, :30] = 26  # a big car region
        pred_train = rng.integers(0, 19, size=(64, 96))
        agree = rng.random((64, 96)) < 0.6
        gt_train = np.vectorize(lambda v: CITYSCAPES_ID_TO_TRAIN_ID.get(int(v), 255))(gt)
        pred_train = np.where(agree & (gt_train != 255), gt_train, pred_train)
        d = tmp_path / "gtFine" / "val" / "city"
        d.mkdir(parents=True, exist_ok=True)
        gt_path = d / f"city_000000_{i:06d}_gtFine_labelIds.png"
        Image.fromarray(gt.astype(np.uint8)).save(gt_path)
        pred_path = tmp_path / f"city_000000_{i:06d}_pred.png"
        Image.fromarray(TRAIN_ID_TO_CITYSCAPES_ID[pred_train]).save(pred_path)
        preds.append(pred_path)
        gts.append(gt_path)
        cm.update(torch.from_numpy(pred_train), torch.from_numpy(gt_train))
    ours = summarize(cm, list(CITYSCAPES_CLASSES))
    official = _official(preds, gts, tmp_path)
    for name, iou in ours["per_class_iou"].items():
        ref = official["classScores"][name]
        assert (math.isnan(iou) and math.isnan(ref)) or abs(iou / 100 - ref) < 1e-6, name
    assert abs(ours["mIoU"] / 100 - official["averageScoreClasses"]) < 1e-6


def test_miou16_13_are_subset_means():
    cm = ConfusionMatrix(19)
    label = torch.arange(19).repeat_interleave(10)
    pred = label.clone()
    pred[::3] = 0
    cm.update(pred, label)
    r = summarize(cm, list(CITYSCAPES_CLASSES))
    from mfmseg.data.labels import SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES

    per = list(r["per_class_iou"].values())
    assert r["mIoU16"] == pytest.approx(np.mean([per[c] for c in SYNTHIA_16_CLASSES]))
    assert r["mIoU13"] == pytest.approx(np.mean([per[c] for c in SYNTHIA_13_CLASSES]))
    assert len(SYNTHIA_16_CLASSES) == 16 and len(SYNTHIA_13_CLASSES) == 13


class _Pointwise(torch.nn.Module):
    """A per-pixel model: sliding windows must reproduce whole-image inference exactly."""
    num_classes, size_multiple = 3, 1

    def predict(self, x):
        return torch.stack([x[:, 0], x[:, 1] * 2, -x[:, 2]], 1)


def test_slide_equals_whole_for_a_pointwise_model():
    x = torch.randn(1, 3, 50, 70)
    whole = whole_inference(_Pointwise(), x, (100, 140))
    slide = slide_inference(_Pointwise(), x, (100, 140), window=(32, 32), stride=(20, 20), batch_size=3)
    torch.testing.assert_close(whole, slide)


@pytest.fixture
def trained(tiny_mfm_run):
    """latest.pth of conftest's shared DACS+MFM run (2 iterations: it holds a Rebuilder)."""
    return tiny_mfm_run / "latest.pth"


def test_export_drops_the_rebuilder_and_has_the_baseline_parameter_count(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["format"] == TRAIN_FORMAT and ckpt["rebuilder"] is not None
    out = export_model(trained, tmp_path / "model.pth")
    exported = torch.load(out, weights_only=True)
    assert set(exported) == {"format", "config", "state_dict", "classes", "palette", "version"}
    baseline = build_model(ModelConfig(name="daformer_mitb0", decoder_channels=64))
    n_export = sum(v.numel() for k, v in exported["state_dict"].items() if "running" not in k and
                   "num_batches" not in k)
    assert n_export == sum(p.numel() for p in baseline.parameters())
    a, _ = load_inference_model(trained)
    b, _ = load_inference_model(out)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


@pytest.mark.slow
def test_cli_evaluate_predict_and_errors(trained, tiny_benchmark, tmp_path, capsys):
    """In-process `mfmseg.cli.main` (a subprocess would add only the interpreter's start-up; `python -m mfmseg`
    itself is run by test_config.py and by every sweep)."""
    assert main(["evaluate", str(trained), "--json", str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert set(result) >= {"mIoU", "mIoU16", "mIoU13", "per_class_iou"} and len(result["per_class_iou"]) == 19
    val = tiny_benchmark / "cityscapes" / "leftImg8bit" / "val"
    for fmt in ("color", "overlay", "trainid", "labelid"):
        assert main(["predict", str(trained), str(val), "--out", str(tmp_path / fmt), "--format", fmt,
                     "--device", "cpu"]) == 0
        outs = sorted((tmp_path / fmt).rglob("*.png"))
        assert len(outs) == 4 and outs[0].relative_to(tmp_path / fmt).parts[0] == "valcity"
        arr = np.asarray(Image.open(outs[0]))
        assert arr.shape[:2] == (64, 128)
        if fmt == "trainid":
            assert arr.ndim == 2 and arr.max() < 19
        if fmt == "labelid":
            assert set(np.unique(arr)) <= set(CITYSCAPES_ID_TO_TRAIN_ID)
    capsys.readouterr()
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    assert main(["evaluate", str(tmp_path / "junk.pth")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "Traceback" not in err
    torch.save({"format": "other"}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="neither an mfmseg training checkpoint nor an exported model"):
        load_inference_model(tmp_path / "other.pth")
    wrong = torch.load(trained, weights_only=True)
    wrong["config"]["model"]["num_classes"] = 16  # a valid config (thing classes < 16) whose weights have 19
    wrong["config"]["uda"]["fd"]["thing_classes"] = [6, 7, 11, 12, 13, 14, 15]
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="does not fit"):
        load_inference_model(tmp_path / "wrong.pth")
