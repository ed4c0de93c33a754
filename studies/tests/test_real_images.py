"""The real-image study's tools on small files: layouts from git clones, and the report's tables."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from mfmseg.data.labels import CITYSCAPES_PALETTE

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git_repo(root, files: dict[str, bytes]):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(root), "PATH": "/usr/bin:/bin"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "data"]):
        subprocess.run(["git", "-C", str(root), *cmd], check=True, env=env)


def _png(arr) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_make_layouts_builds_both_datasets_a_fixed_split_and_their_statistics(tmp_path, study_script):
    make = study_script("real_images/make_layouts.py")
    kitti = "section_2_sensor_data_processing/datasets/kitti"
    colours = np.zeros((4, 6, 3), np.uint8)
    colours[:] = CITYSCAPES_PALETTE[13]  # car
    files = {}
    for i in range(8):
        files[f"{kitti}/image_2/{i:06d}_10.png"] = _png(np.full((4, 6, 3), i, np.uint8))
        files[f"{kitti}/semantic_rgb/{i:06d}_10.png"] = _png(colours)
    files[f"{kitti}/velodyne/000000.bin"] = b"not wanted"
    _git_repo(tmp_path / "kitti_repo", files)
    idd = {}
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(n):
            idd[f"idd20k_lite/leftImg8bit/{split}/{i}/{i:06d}_image.jpg"] = _png(np.zeros((4, 6, 3), np.uint8))
            if split != "test":
                idd[f"idd20k_lite/gtFine/{split}/{i}/{i:06d}_label.png"] = _png(np.full((4, 6), 3, np.uint8))
    _git_repo(tmp_path / "idd_repo", idd)
    make.KITTI_VAL = 2
    out = tmp_path / "real"
    record = make.make_layouts(tmp_path / "kitti_repo", tmp_path / "idd_repo", out, nproc=1)
    assert len(record["kitti"]["val"]) == 2 and len(record["kitti"]["train"]) == 6
    assert not set(record["kitti"]["val"]) & set(record["kitti"]["train"])
    assert record == json.loads((out / "splits.json").read_text())
    assert make.kitti_split([f"{i:06d}_10" for i in range(8)]) == record["kitti"]  # deterministic
    assert not (out / "kitti" / "training" / "velodyne").exists()
    train_ids = np.asarray(Image.open(out / "kitti/training/semantic_rgb/000000_10_labelTrainIds.png"))
    assert (train_ids == 13).all()
    assert len(json.loads((out / "kitti/sample_class_stats.json").read_text())) == 8  # training/ only
    assert len(json.loads((out / "idd/sample_class_stats.json").read_text())) == 3
    assert sorted(p.name for p in (out / "kitti/val/image_2").iterdir()) == [f"{i}.png" for i in record["kitti"]["val"]]
    assert make.make_layouts(tmp_path / "kitti_repo", tmp_path / "idd_repo", out) == record  # idempotent


def _run(folder, label, seed, miou_by_iter, q=0.7, im=None):
    run = folder / "runs" / label / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"train:\n  max_iters: {max(miou_by_iter)}\n")
    rows = [{"kind": "train", "iter": it, "pseudo_q": q, "pseudo_acc": 0.8, "pseudo_acc_conf": 0.9}
            for it in range(10, max(miou_by_iter) + 1, 10)]
    for i, (it, m) in enumerate(sorted(miou_by_iter.items())):
        rows.append({"kind": "val", "iter": it, "mIoU": m, "per_class_iou": {"a": m, "b": 2 * m},
                     "label_free": {"im": (im or {}).get(it, 0.0), "agreement": 0.5, "entropy": 0.3,
                                    "confident": 0.6}})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_report_pairs_seeds_counts_signs_and_skips_unfinished_runs(tmp_path, study_script):
    report = study_script("real_images/report.py")
    main = tmp_path / "main"
    _run(main, "dacs", 0, {50: 40.0, 100: 42.0})
    _run(main, "dacs", 1, {50: 41.0, 100: 44.0})
    _run(main, "dacs_mfm", 0, {50: 41.0, 100: 45.0}, im={50: 0.1, 100: 0.2})
    _run(main, "dacs_mfm", 1, {50: 44.0, 100: 43.0}, im={50: 0.3, 100: 0.2})
    _run(main, "dacs_bnpass", 0, {50: 41.0})  # unfinished: max_iters 50 written, so make it look unfinished
    (main / "runs/dacs_bnpass/seed0/config.yaml").write_text("train:\n  max_iters: 100\n")
    text = report.report(report.collect(tmp_path))
    assert "| dacs_mfm − dacs | 2 | +1.00 ± 2.83 | 1/2 |" in text
    assert "running (at 50)" in text and "dacs_bnpass − dacs" not in text
    assert "| Δ IoU | +1.00 | +2.00 |" in text
    # im picks iteration 100 of mfm seed 0 (best) and 50 of seed 1 (best): 2 of the 4 finished runs have im
    # constant 0 elsewhere, where the first (iteration 50) is picked: worse for both dacs runs
    assert "| im | 2/4 |" in text
