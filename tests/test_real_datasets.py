"""KITTI and IDD layouts, the IDD level-1 class set and its 19 -> 7 map, on small files written here."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mfmseg.cli import main
from mfmseg.config import Config, DataConfig, DatasetConfig, RCSConfig, load_config
from mfmseg.data.datasets import build_dataset
from mfmseg.data.labels import (
    CITYSCAPES_PALETTE,
    CITYSCAPES_VOID_COLORS,
    IDD_LEVEL1,
    decode_color_label,
)
from mfmseg.data.layouts import LAYOUTS
from mfmseg.data.prepare import prepare_dataset
from mfmseg.data.sampling import RareClassSampler
from mfmseg.engine.evaluation.evaluate import class_names, class_palette
from mfmseg.errors import UserError

H, W = 8, 19  # one column per Cityscapes train id


def _every_class_rgb() -> np.ndarray:
    """Column c in the colour of train id c; the last row: a void colour (tunnel) and black (unlabelled)."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:] = np.asarray(CITYSCAPES_PALETTE, np.uint8)[None]
    rgb[-1, :10] = (150, 120, 90)
    rgb[-1, 10:] = 0
    return rgb


def _kitti(root, split="training", labels="semantic_rgb", n=2):
    for i in range(n):
        img = root / split / "image_2" / f"{i:06d}_10.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(img)
        lbl = root / split / labels / f"{i:06d}_10.png"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        if labels == "semantic_rgb":
            Image.fromarray(_every_class_rgb()).save(lbl)
        else:  # Cityscapes label ids: column c holds the id of train id c
            ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
            Image.fromarray(np.tile(np.asarray(ids, np.uint8), (H, 1)), mode="L").save(lbl)


def _idd_lite(root, split, labelled=True, n=2):
    for i in range(n):
        img = root / "leftImg8bit" / split / str(i) / f"{i:06d}_image.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 30, np.uint8)).save(img)
        if labelled:
            lbl = root / "gtFine" / split / str(i) / f"{i:06d}_label.png"
            lbl.parent.mkdir(parents=True, exist_ok=True)
            label = np.tile(np.arange(W, dtype=np.uint8) % 7, (H, 1))
            label[0] = 255
            Image.fromarray(label, mode="L").save(lbl)


@pytest.mark.parametrize("labels", ["semantic_rgb", "semantic"])
def test_prepare_kitti_reads_colour_or_id_labels_to_the_same_train_ids(tmp_path, labels):
    _kitti(tmp_path, labels=labels)
    test_img = tmp_path / "testing" / "image_2" / "000000_10.png"  # KITTI's unlabelled test split: no error
    test_img.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(test_img)
    prepare_dataset("kitti", tmp_path, nproc=1)
    train_ids = np.asarray(Image.open(tmp_path / "training" / labels / "000000_10_labelTrainIds.png"))
    want = np.tile(np.arange(W, dtype=np.uint8), (H, 1))
    if labels == "semantic_rgb":
        want[-1] = 255  # void colours -> ignore
    assert (train_ids == want).all()
    stats = json.loads((tmp_path / "sample_class_stats.json").read_text())
    assert len(stats) == 2 and stats[0]["file"] == f"training/{labels}/000000_10_labelTrainIds.png"


def test_pairs_say_whether_their_label_is_colour_coded_and_prepare_follows_the_flag(tmp_path, monkeypatch):
    _kitti(tmp_path / "rgb", labels="semantic_rgb", n=1)
    _kitti(tmp_path / "ids", labels="semantic", n=1)
    _kitti(tmp_path / "ids", labels="semantic_rgb", n=1)  # both folders: the label ids win
    kitti = LAYOUTS["kitti"]
    assert [p.color_label for p in kitti.find_pairs(tmp_path / "rgb", "training", False)] == [True]
    assert [p.color_label for p in kitti.find_pairs(tmp_path / "ids", "training", False)] == [False]
    _, label, color = kitti.find_pairs(tmp_path / "ids", "training", False)[0]
    assert label == tmp_path / "ids/training/semantic/000000_10.png" and not color
    # the flag, not the name of the label's folder, decides: colour labels one folder deeper (per city) decode
    nested = replace(kitti, image_dir="img/{split}", label_dir="ids/{split}", color_label_dir="rgb/{split}")
    monkeypatch.setitem(LAYOUTS, "kitti", nested)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(_mkdir(tmp_path / f"n/img/training/{name}/x.png"))
        Image.fromarray(_every_class_rgb()).save(_mkdir(tmp_path / f"n/rgb/training/{name}/x.png"))
    assert all(p.color_label for p in nested.find_pairs(tmp_path / "n", "training", False))
    prepare_dataset("kitti", tmp_path / "n", nproc=1)
    train_ids = np.asarray(Image.open(tmp_path / "n/rgb/training/a/x_labelTrainIds.png"))
    assert train_ids[0].tolist() == list(range(W))


def _mkdir(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_prepare_kitti_refuses_a_colour_label_off_the_palette_in_one_line(tmp_path, capsys):
    _kitti(tmp_path, n=1)
    blurred = _every_class_rgb().astype(np.int16) + 3  # anti-aliased / compressed: no exact colour
    Image.fromarray(blurred.clip(0, 255).astype(np.uint8)).save(tmp_path / "training/semantic_rgb/000000_10.png")
    assert main(["prepare", "kitti", str(tmp_path), "--nproc", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "000000_10.png" in err[0] and "Cityscapes palette" in err[0]
    assert not (tmp_path / "training/semantic_rgb/000000_10_labelTrainIds.png").exists()


def _decode_color_label_by_colour(rgb, palette, void=()):
    """The former decoder, one pass per colour: the reference the one-pass lookup must equal."""
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    out = np.full(code.shape, 255, np.uint8)
    for train_id, (r, g, b) in enumerate(palette):
        out[code == ((r << 16) | (g << 8) | b)] = train_id
    known = out != 255
    for r, g, b in void:
        known |= code == ((r << 16) | (g << 8) | b)
    return out, float(1 - known.mean()) if code.size else 0.0


@pytest.mark.parametrize("off_palette", [0.0, 0.03, 0.3])
def test_decode_color_label_in_one_pass_equals_the_per_colour_decoder(off_palette):
    rng = np.random.default_rng(0)
    colours = np.asarray(CITYSCAPES_PALETTE + CITYSCAPES_VOID_COLORS, np.uint8)
    rgb = colours[rng.integers(len(colours), size=(61, 83))]
    off = rng.random((61, 83)) < off_palette  # random colours: anti-aliasing, compression
    rgb[off] = rng.integers(0, 256, size=(int(off.sum()), 3), dtype=np.uint8)
    rgb[0, :3] = (0, 0, 71)  # a code between two palette codes, and the smallest and largest 24-bit codes
    rgb[1, :3] = (0, 0, 0)
    rgb[2, :3] = (255, 255, 255)
    out, unknown = decode_color_label(rgb, CITYSCAPES_PALETTE, CITYSCAPES_VOID_COLORS)
    ref_out, ref_unknown = _decode_color_label_by_colour(rgb, CITYSCAPES_PALETTE, CITYSCAPES_VOID_COLORS)
    assert out.dtype == np.uint8 and np.array_equal(out, ref_out) and unknown == ref_unknown
    assert set(np.unique(out)) == set(range(19)) | {255}
    for palette, void in (((), ()), (CITYSCAPES_PALETTE, ()), ((), CITYSCAPES_VOID_COLORS),
                          (CITYSCAPES_PALETTE[:3] + CITYSCAPES_PALETTE[:1], CITYSCAPES_PALETTE[1:2])):
        got, ref = decode_color_label(rgb, palette, void), _decode_color_label_by_colour(rgb, palette, void)
        assert np.array_equal(got[0], ref[0]) and got[1] == ref[1]  # no colours, duplicates, palette ∩ void
    empty = np.zeros((0, 4, 3), np.uint8)
    assert decode_color_label(empty, CITYSCAPES_PALETTE)[1] == 0.0


def test_prepare_idd_lite_and_full_idd_naming(tmp_path):
    lite = tmp_path / "lite"
    _idd_lite(lite, "train")
    _idd_lite(lite, "val")
    _idd_lite(lite, "test", labelled=False)
    prepare_dataset("idd", lite, nproc=1)
    ds = build_dataset(DatasetConfig(kind="idd", root=str(lite), split="val", resize=[W, H]), "val",
                       num_classes=7, classes="idd_level1")
    assert len(ds) == 2 and ds[0]["label"][1].tolist() == (np.arange(W) % 7).tolist()
    assert len(json.loads((lite / "sample_class_stats.json").read_text())) == 2  # train only
    full = tmp_path / "full"  # full IDD with its toolkit's level-1 label files
    img = full / "leftImg8bit/train/201/frame0029_leftImg8bit.png"
    img.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img)
    lbl = full / "gtFine/train/201/frame0029_gtFine_labellevel1Ids.png"
    lbl.parent.mkdir(parents=True)
    Image.fromarray(np.full((H, W), 6, np.uint8), mode="L").save(lbl)
    prepare_dataset("idd", full, nproc=1)
    assert json.loads((full / "sample_class_stats.json").read_text())[0]["6"] == H * W


def test_kitti_labels_map_down_to_idd_level1_and_idd_cannot_map_up(tmp_path):
    _kitti(tmp_path / "kitti", labels="semantic")
    prepare_dataset("kitti", tmp_path / "kitti", nproc=1)
    cfg = DatasetConfig(kind="kitti", root=str(tmp_path / "kitti"), split="training", resize=[W, H])
    fine = build_dataset(cfg, "val", num_classes=19)[0]["label"][0]
    coarse = build_dataset(cfg, "val", num_classes=7, classes="idd_level1")[0]["label"][0]
    assert fine.tolist() == list(range(19))
    assert coarse.tolist() == list(IDD_LEVEL1.from_cityscapes)
    # the map by name, as the issue states it
    names = dict(zip(class_names(19), (IDD_LEVEL1.names[c] for c in coarse.tolist())))
    assert names["road"] == "drivable" and names["terrain"] == "non-drivable" and names["rider"] == "living things"
    assert names["bicycle"] == "vehicles" and names["traffic sign"] == "roadside objects"
    assert names["vegetation"] == "far objects" and names["sky"] == "sky"
    _idd_lite(tmp_path / "idd", "train")
    prepare_dataset("idd", tmp_path / "idd", nproc=1)
    with pytest.raises(UserError, match="cannot be mapped to the cityscapes classes"):
        build_dataset(DatasetConfig(kind="idd", root=str(tmp_path / "idd"), split="train"), "train", num_classes=19)


def test_rare_class_sampling_counts_in_the_runs_class_set(tmp_path):
    _kitti(tmp_path, labels="semantic")
    prepare_dataset("kitti", tmp_path, nproc=1)
    ds = build_dataset(DatasetConfig(kind="kitti", root=str(tmp_path), split="training", resize=[W, H],
                                     crop=[H, H]), "train", num_classes=7, classes="idd_level1")
    rcs = RareClassSampler(tmp_path, RCSConfig(min_pixels=0), ds)
    assert rcs.classes == list(range(7))
    # vehicles merge 6 columns of 8 pixels per image: its share is 6/19, so it is the least likely class
    assert int(np.argmin(rcs.probs)) == 3 and rcs.files[3] == [0, 1]


def test_rare_class_sampling_needs_only_the_file_it_reads_and_names_it_when_missing(tmp_path):
    _kitti(tmp_path, labels="semantic")
    prepare_dataset("kitti", tmp_path, nproc=1)
    (tmp_path / "sample_class_stats_dict.json").unlink()  # DAFormer's other two files: not read
    (tmp_path / "samples_with_class.json").unlink()
    ds = build_dataset(DatasetConfig(kind="kitti", root=str(tmp_path), split="training", resize=[W, H],
                                     crop=[H, H]), "train", num_classes=19)
    assert RareClassSampler(tmp_path, RCSConfig(min_pixels=0), ds).classes == list(range(19))
    (tmp_path / "sample_class_stats.json").unlink()
    with pytest.raises(UserError) as err:
        RareClassSampler(tmp_path, RCSConfig(min_pixels=0), ds)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "sample_class_stats.json") in msg and "mfmseg prepare" in msg
    assert "samples_with_class" not in msg


def test_a_class_set_fixes_the_class_count_and_names(tmp_path):
    with pytest.raises(UserError, match="set model.num_classes=7"):
        load_config("real_kitti2idd_effl0_dacs", ["model.num_classes=19"])
    with pytest.raises(UserError, match="data.classes='coarse' is not one of"):
        load_config("real_kitti2idd_effl0_dacs", ["data.classes=coarse"])
    cfg = load_config("real_kitti2idd_effl0_dacs_mfm")
    assert (cfg.data.classes, cfg.model.num_classes, cfg.uda.mfm.enabled) == ("idd_level1", 7, True)
    assert class_names(7, "idd_level1")[3] == "vehicles" and class_palette(7, "idd_level1")[6] == [70, 130, 180]
    assert class_names(3) == ["class_0", "class_1", "class_2"] and len(class_palette(3)) == 3
    assert isinstance(cfg, Config) and isinstance(cfg.data, DataConfig)


def test_predict_paints_a_7_class_model_in_its_own_palette_and_refuses_cityscapes_label_ids(tmp_path):
    import torch

    from mfmseg.config import ModelConfig
    from mfmseg.engine.evaluation.predict import predict_images
    from mfmseg.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="daformer_mitb0", decoder_channels=16, num_classes=7)).eval()
    cfg = load_config("real_kitti2idd_effl0_dacs", ["data.val.resize=[64,32]"])
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(img)
    out = predict_images(model, cfg, [str(img)], tmp_path / "color", fmt="color")
    colours = {tuple(c) for c in np.asarray(Image.open(out[0])).reshape(-1, 3).tolist()}
    assert colours and colours <= set(IDD_LEVEL1.palette)
    with pytest.raises(UserError, match="use --format trainid"):
        predict_images(model, cfg, [str(img)], tmp_path / "ids", fmt="labelid")
