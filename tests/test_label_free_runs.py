"""Adapting without target labels, end to end (issue 19): a target with no label folder trains, logs the
label-free metrics, keeps best.pth by one of them, and `mfmseg select` ranks its evaluations."""

from __future__ import annotations

import json
import shutil

import pytest

from mfmseg.cli import main
from mfmseg.config import load_config
from mfmseg.engine.training.trainer import train


@pytest.fixture
def unlabelled_target(tiny_benchmark, tmp_path):
    """The tiny benchmark's Cityscapes copy without gtFine/: images only, as a user's own camera data."""
    root = tmp_path / "camera"
    shutil.copytree(tiny_benchmark / "cityscapes" / "leftImg8bit", root / "leftImg8bit")
    return root


def _rows(work_dir, kind="val"):
    return [r for r in map(json.loads, (work_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.slow  # trains end to end: seconds
def test_a_run_without_target_labels_logs_selects_and_ranks(unlabelled_target, tiny_overrides, tmp_path, capsys):
    work = tmp_path / "run"
    overrides = tiny_overrides(work, f"data.target.root={unlabelled_target}", f"data.val.root={unlabelled_target}",
                               "train.select_by=im", "train.keep_checkpoints=true")
    summary = train(load_config("synthetic_dacs_mfm", overrides))
    rows = _rows(work)
    assert [r["iter"] for r in rows] == [2, 4]
    for r in rows:
        assert "mIoU" not in r  # nothing to compare against
        free = r["label_free"]
        assert 0 <= free["entropy"] <= 1 and -1 <= free["im"] <= 1 and 0 <= free["agreement"] <= 1
        assert 0 <= free["flip_consistency"] <= 1 and free["snd"] > 0 and free["class_kl"] >= 0
        assert len(free["predicted_distribution"]) == 19
    assert summary["mIoU"] is None and summary["label_free"] == rows[-1]["label_free"]
    best = json.loads((work / "best.json").read_text())
    assert best["select_by"] == "im" and best["im"] == max(r["label_free"]["im"] for r in rows)
    assert (work / "best.pth").is_file() and (work / "checkpoints" / "iter_000002.pth").is_file()

    assert main(["select", str(work), "--by", "im", "--json", str(tmp_path / "rank.json")]) == 0
    ranked = json.loads((tmp_path / "rank.json").read_text())
    assert [r["iter"] for r in ranked] == [best["iter"], 6 - best["iter"]]
    assert ranked[0]["checkpoint"].endswith(f"iter_{best['iter']:06d}.pth")
    assert "rank by im (higher is better)" in capsys.readouterr().out

    # the kept weights are inference models: predict reads them
    out = tmp_path / "pred"
    img = next(unlabelled_target.rglob("*.png"))
    assert main(["predict", str(work / "best.pth"), str(img), "--out", str(out)]) == 0
    assert list(out.iterdir())


def test_without_a_val_root_the_target_training_images_are_watched(tiny_overrides, tmp_path):
    work = tmp_path / "run"
    summary = train(load_config("synthetic_dacs", tiny_overrides(work, "data.val.root=", "train.max_iters=1")))
    assert summary["mIoU"] is None and "entropy" in summary["label_free"]  # labels exist but are never read


def test_with_labels_both_are_logged(tiny_mfm_run):
    """conftest's shared run (labelled val, train.select_by=mIoU)."""
    work = tiny_mfm_run
    row = _rows(work)[-1]
    assert "mIoU" in row and "entropy" in row["label_free"]
    assert json.loads((work / "best.json").read_text())["mIoU"] == row["mIoU"]


@pytest.mark.parametrize("overrides, word", [
    (["train.select_by=accuracy"], "select_by"),
    (["train.select_by=mIoU", "data.val.root="], "labelled"),
    (["train.select_by=entropy", "eval.label_free=false"], "label_free"),
])
def test_select_by_refuses_what_the_run_cannot_log(overrides, word, tiny_overrides, tmp_path, capsys):
    work = tmp_path / "run"
    assert main(["train", "synthetic_dacs", *tiny_overrides(work, *overrides)]) == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err


def test_select_names_a_bad_metric_and_a_folder_without_a_run(tmp_path, capsys):
    assert main(["select", str(tmp_path), "--by", "im"]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert main(["select", str(tmp_path), "--by", "accuracy"]) == 2
    assert "unknown metric" in capsys.readouterr().err
