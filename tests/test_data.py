"""Data: synthetic benchmark determinism, layouts and their errors, id maps, RCS statistics, crops, the stream."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mfmseg.cli import main
from mfmseg.config import DataConfig, DatasetConfig, RCSConfig
from mfmseg.data.datasets import build_dataset
from mfmseg.data.labels import CITYSCAPES_ID_TO_TRAIN_ID
from mfmseg.data.prepare import prepare_dataset
from mfmseg.data.sampling import build_uda_loader, class_probabilities
from mfmseg.data.synthetic import write_benchmark
from mfmseg.data.transforms import random_crop, target_size
from mfmseg.errors import UserError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_is_byte_identical_under_a_seed_and_uses_the_real_layouts(tmp_path):
    a = write_benchmark(tmp_path / "a", seed=3, num_source=3, num_target=3, num_val=2, size=(64, 128))
    b = write_benchmark(tmp_path / "b", seed=3, num_source=3, num_target=3, num_val=2, size=(64, 128))
    c = write_benchmark(tmp_path / "c", seed=4, num_source=3, num_target=3, num_val=2, size=(64, 128))
    assert _digest(a) == _digest(b) != _digest(c)
    label = Image.open(a / "gta" / "labels" / "00000.png")
    assert label.mode == "P" and set(np.unique(np.asarray(label))) <= set(CITYSCAPES_ID_TO_TRAIN_ID)
    assert len(list((a / "cityscapes" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))) == 2
    assert len(list((a / "cityscapes" / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))) == 3


def test_synthetic_scenes_have_many_classes_and_domains_differ(tmp_path):
    root = write_benchmark(tmp_path, seed=0, num_source=20, num_target=20, num_val=0, size=(128, 256))
    ids = np.concatenate([np.asarray(Image.open(p)).ravel() for p in (root / "gta" / "labels").glob("*.png")])
    assert len(set(np.unique(ids)) & set(CITYSCAPES_ID_TO_TRAIN_ID)) >= 12
    src = np.asarray(Image.open(root / "gta" / "images" / "00000.png"), np.float32)
    tgt = next((root / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))
    assert np.abs(src.mean((0, 1)) - np.asarray(Image.open(tgt), np.float32).mean((0, 1))).max() > 5


def test_prepare_writes_train_ids_and_daformer_statistics(tmp_path):
    root = tmp_path / "gta"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labels = {"a.png": np.array([[7, 7, 26, 0], [8, 8, 26, 99]], np.uint8),
              "b.png": np.array([[7, 24, 24, 24], [7, 7, 7, 1]], np.uint8)}
    for name, lab in labels.items():
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images" / name)
        Image.fromarray(lab, mode="L").save(root / "labels" / name)
    prepare_dataset("gta", root, nproc=1)
    a = np.asarray(Image.open(root / "labels" / "a_labelTrainIds.png"))
    assert a.tolist() == [[0, 0, 13, 255], [1, 1, 13, 255]]
    stats = json.loads((root / "sample_class_stats.json").read_text())
    assert stats == [{"0": 2, "1": 2, "13": 2, "file": "labels/a_labelTrainIds.png"},
                     {"0": 4, "11": 3, "file": "labels/b_labelTrainIds.png"}]
    assert json.loads((root / "sample_class_stats_dict.json").read_text())["labels/b_labelTrainIds.png"] == \
        {"0": 4, "11": 3}
    assert json.loads((root / "samples_with_class.json").read_text()) == {
        "0": [["labels/a_labelTrainIds.png", 2], ["labels/b_labelTrainIds.png", 4]],
        "1": [["labels/a_labelTrainIds.png", 2]], "11": [["labels/b_labelTrainIds.png", 3]],
        "13": [["labels/a_labelTrainIds.png", 2]]}
    mtime = (root / "labels" / "a_labelTrainIds.png").stat().st_mtime_ns
    prepare_dataset("gta", root, nproc=1)  # idempotent: reuses, never re-converts a train-id file
    assert (root / "labels" / "a_labelTrainIds.png").stat().st_mtime_ns == mtime
    assert not list(root.rglob("*.tmp*"))


def test_synthia_16bit_labels(tmp_path):
    root = tmp_path / "synthia"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    cls = np.array([[3, 4, 2, 21], [1, 10, 8, 13]], np.uint16)  # 13 is not mapped -> 255
    bgra = np.zeros((2, 4, 3), np.uint16)
    bgra[:, :, 2] = cls  # OpenCV's last (BGR) channel = the first channel as PIL reads it
    bgra[:, :, 0] = 777  # instance ids in another channel must not leak
    cv2.imwrite(str(root / "GT" / "LABELS" / "0000001.png"), bgra)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "RGB" / "0000001.png")
    prepare_dataset("synthia", root, nproc=1)
    out = np.asarray(Image.open(root / "GT" / "LABELS" / "0000001_labelTrainIds.png"))
    assert out.tolist() == [[0, 1, 2, 3], [10, 11, 13, 255]]


def test_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(DatasetConfig(kind="gta", root=str(tmp_path / "nope")), "train")
    (tmp_path / "gta" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="no \\*.png images"):
        build_dataset(DatasetConfig(kind="gta", root=str(tmp_path / "gta")), "train")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "gta" / "images" / "x.png")
    (tmp_path / "gta" / "labels").mkdir()
    with pytest.raises(UserError, match="has no label"):
        build_dataset(DatasetConfig(kind="gta", root=str(tmp_path / "gta")), "train")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "gta" / "labels" / "x.png")
    with pytest.raises(UserError, match="mfmseg prepare gta"):
        build_dataset(DatasetConfig(kind="gta", root=str(tmp_path / "gta")), "train")
    prepare_dataset("gta", tmp_path / "gta", nproc=1)
    ds = build_dataset(DatasetConfig(kind="gta", root=str(tmp_path / "gta")), "val")
    with pytest.raises(UserError, match="label .* is 5×4 but image .* is 4×4"):
        ds[0]
    (tmp_path / "gta" / "images" / "x.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        ds[0]
    with pytest.raises(UserError, match="cityscapes layout: missing folder"):
        build_dataset(DatasetConfig(kind="cityscapes", root=str(tmp_path / "gta")), "val")


def test_rcs_probabilities_for_a_known_histogram():
    p = class_probabilities({0: 900, 1: 90, 2: 10}, temperature=0.01)
    f = np.array([0.9, 0.09, 0.01])
    expected = np.exp((1 - f) / 0.01) / np.exp((1 - f) / 0.01).sum()
    np.testing.assert_allclose(p, expected)
    assert p[2] > p[1] > p[0]


def test_resize_bound_and_crop_constraint():
    assert target_size(1914, 1052, (1280, 720), True) == (1280, 704)
    assert target_size(2048, 1024, (1024, 512), True) == (1024, 512)
    label = np.zeros((100, 100), np.uint8)
    label[:, 60:] = 1  # most crops hold a single class
    rng = np.random.default_rng(0)
    _, crop = random_crop(np.zeros((100, 100, 3), np.uint8), label, (20, 20), rng, cat_max_ratio=0.75)
    counts = np.bincount(crop.ravel(), minlength=2)
    assert crop.shape == (20, 20) and counts.max() / counts.sum() < 0.75


def _data_cfg(root, workers):
    common = dict(resize=[128, 64], crop=[32, 32])
    return DataConfig(source=DatasetConfig(kind="gta", root=str(root / "gta"), **common),
                      target=DatasetConfig(kind="cityscapes", root=str(root / "cityscapes"), **common),
                      batch_size=2, num_workers=workers, rcs=RCSConfig(min_pixels=10))


def test_stream_is_deterministic_with_and_without_workers_and_resumable(tiny_benchmark):
    def first(cfg, n, **kw):
        it = build_uda_loader(cfg, seed=1, **kw)
        return [next(it) for _ in range(n)]

    a = first(_data_cfg(tiny_benchmark, 0), 4)
    b = first(_data_cfg(tiny_benchmark, 2), 4)
    resumed = first(_data_cfg(tiny_benchmark, 0), 2, start_iter=2)
    other_rank = first(_data_cfg(tiny_benchmark, 0), 1, rank=1)
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x)
    for x, y in zip(a[2:], resumed):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a[0]["src_img"], other_rank[0]["src_img"])
    assert a[0]["src_img"].shape == (2, 3, 32, 32) and a[0]["src_label"].dtype == torch.int64


def test_cli_synth_and_prepare(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--num-source", "2", "--num-target", "2", "--num-val", "1",
                 "--size", "64x64"]) == 0
    for kind in ("gta", "cityscapes"):
        assert main(["prepare", kind, str(tmp_path / kind), "--nproc", "1"]) == 0
        assert (tmp_path / kind / "samples_with_class.json").exists()
    capsys.readouterr()
    assert main(["prepare", "gta", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
