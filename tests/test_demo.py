"""`mfmseg demo` end to end on the tiny benchmark: three presets from ImageNet weights, swept and reported."""

from __future__ import annotations

import json

import pytest
import yaml

from mfmseg.cli import main
from mfmseg.engine.demo import DEMO_RUNS


@pytest.mark.slow
def test_demo_sweeps_the_pretrained_presets_and_reports(tmp_path, tiny_benchmark, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(tiny_benchmark), "--iters", "3", "--seeds", "0"]) == 0
    results = json.loads((out / "sweep" / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["done"] * 3
    for label, preset in DEMO_RUNS:
        run = out / "sweep" / "runs" / label / "seed0"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["model"]["pretrained"] == "imagenet" and cfg["model"]["name"] == "daformer_efflite0"
        summary = json.loads((run / "summary.json").read_text())
        assert results["labels"][label]["mIoU"]["per_seed"]["0"] == pytest.approx(summary["mIoU"])
    mfm_cfg = yaml.safe_load((out / "sweep" / "runs" / "DACS+MFM" / "seed0" / "config.yaml").read_text())
    assert mfm_cfg["uda"]["mfm"]["enabled"] and mfm_cfg["uda"]["mfm"]["grid"] == 16
    report = (out / "report.md").read_text()
    assert all(f"| {label} |" in report for label, _ in DEMO_RUNS)
    assert "seed-paired" in report and (out / "iou_per_class.png").stat().st_size > 0
    assert "MFM" in capsys.readouterr().out
