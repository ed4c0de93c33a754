"""Data layouts beyond GTA: Cityscapes val samples at full label resolution, ACDC, Dark Zurich, YAML folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mfmseg.config import DatasetConfig, EvalConfig
from mfmseg.data.datasets import build_dataset
from mfmseg.data.prepare import prepare_dataset
from mfmseg.engine.evaluation.evaluate import evaluate
from mfmseg.errors import UserError


def _pair(img_path, lbl_path, label_ids, size=(8, 16)):
    img_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(img_path)
    if lbl_path is not None:
        lbl_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(size, 0, np.uint8) + label_ids, mode="L").save(lbl_path)


def _cityscapes(root, split="val", label=26):
    stem = "aachen_000000_000019"
    _pair(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png",
          root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", np.uint8(label))


def test_cityscapes_val_resizes_the_image_but_keeps_the_full_resolution_label(tmp_path):
    _cityscapes(tmp_path, "train", 7)
    _cityscapes(tmp_path, "val", 26)
    prepare_dataset("cityscapes", tmp_path, nproc=1)
    sample = build_dataset(DatasetConfig(kind="cityscapes", root=str(tmp_path), split="val", resize=[8, 4]), "val")[0]
    assert sample["img"].shape == (3, 4, 8)
    assert sample["label"].shape == (8, 16) and sample["label"].unique().tolist() == [13]  # car
    assert sample["name"] == "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    stats = json.loads((tmp_path / "sample_class_stats.json").read_text())
    assert stats == [{"0": 128, "file": "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"}]


def test_acdc_and_unlabelled_dark_zurich_train(tmp_path):
    acdc = tmp_path / "acdc"
    _pair(acdc / "rgb_anon" / "train" / "night" / "GOPR0351" / "GOPR0351_frame_000159_rgb_anon.png",
          acdc / "gt" / "train" / "night" / "GOPR0351" / "GOPR0351_frame_000159_gt_labelIds.png", np.uint8(24))
    prepare_dataset("acdc", acdc, nproc=1)
    ds = build_dataset(DatasetConfig(kind="acdc", root=str(acdc), resize=[16, 8], crop=[8, 8]), "train")
    assert ds[0]["label"].unique().tolist() == [11]  # person
    dz = tmp_path / "dz"
    _pair(dz / "rgb_anon" / "train" / "night" / "GOPR0356" / "GOPR0356_000000_rgb_anon.png", None, None)
    sample = build_dataset(DatasetConfig(kind="darkzurich", root=str(dz), resize=[16, 8], crop=[8, 8]), "train")[0]
    assert sample["img"].shape == (3, 8, 8) and (sample["label"] == 255).all()
    val = build_dataset(DatasetConfig(kind="darkzurich", root=str(dz), resize=[16, 8]), "val")
    assert not val.has_labels and "label" not in val[0]  # label-free metrics only (issue 19)
    with pytest.raises(UserError, match="no labels"):  # and evaluating against it names what is missing
        evaluate(torch.nn.Identity(), val, EvalConfig())


def test_folder_dataset_uses_its_yaml_class_map(tmp_path):
    _pair(tmp_path / "images" / "a.png", tmp_path / "labels" / "a.png", np.uint8(5))
    with pytest.raises(UserError, match="classes.yaml not found"):
        prepare_dataset("folder", tmp_path, nproc=1)
    (tmp_path / "classes.yaml").write_text("names: [road, car]\nid_to_train_id: {5: 1, 6: 0}\n")
    prepare_dataset("folder", tmp_path, nproc=1)
    assert np.unique(np.asarray(Image.open(tmp_path / "labels" / "a_labelTrainIds.png"))).tolist() == [1]
    (tmp_path / "classes.yaml").write_text("id_to_train_id: {5: 300}\n")
    with pytest.raises(UserError, match="train ids must be in 0..254"):
        prepare_dataset("folder", tmp_path, nproc=1)
