"""`mfmseg demo` end to end on the tiny benchmark: three presets from ImageNet weights, swept and reported."""

from __future__ import annotations

import json

import pytest
import yaml

from mfmseg.cli import main
from mfmseg.engine.tools.demo import DEMO_RUNS, late_pseudo_weight, verdict


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


def _log(work_dir, qs):
    work_dir.mkdir(parents=True)
    rows = [{"kind": "train", "iter": 10 * (i + 1), "pseudo_q": q} for i, q in enumerate(qs)]
    rows.insert(2, {"kind": "val", "iter": 20, "mIoU": 1.0})
    (work_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_verdict_states_the_gains_and_how_much_mfm_acted(tmp_path):
    _log(tmp_path / "m0", [0.0, 0.0, 0.1, 0.2, 0.2, 0.3])  # last third: 0.2, 0.3
    _log(tmp_path / "m1", [0.0, 0.1, 0.2, 0.3, 0.4, 0.2])  # last third: 0.4, 0.2
    assert late_pseudo_weight([tmp_path / "m0", tmp_path / "m1", tmp_path / "absent"]) == pytest.approx(0.275)
    miou = {"source-only": 11.0, "DACS": 30.0, "DACS+MFM": 31.0}
    results = {"labels": {label: {"mIoU": {"n": 2, "mean": value}} for label, value in miou.items()},
               "runs": [{"label": "DACS+MFM", "work_dir": str(tmp_path / m)} for m in ("m0", "m1")]}
    results["labels"]["DACS+MFM"]["vs_baseline"] = {"mean": 1.0, "positive": 1, "n": 2}
    text = verdict(results)
    assert "gained 19.0 mIoU points over source-only (11.0 -> 30.0" in text
    assert "MFM added 1.00 points on top of DACS (seed-paired, positive on 1 of 2 seeds)" in text
    assert "within seed noise" in text and "averaged only 0.28 over the last third" in text
    assert "studies/real_images/README.md" in text  # the synthetic reading points at the real-image one
    _log(tmp_path / "m2", [0.7, 0.8, 0.9])
    results["runs"] = [{"label": "DACS+MFM", "work_dir": str(tmp_path / "m2")}]
    assert "averaged only" not in verdict(results)  # q >= 0.6: MFM acted
