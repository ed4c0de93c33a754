"""benchmarks/gpu_check.py, the first-GPU check, run the way a CPU can: `--tiny --device cpu` (small networks of
the same families, tiny crops, one step), so that the command a GPU user runs cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("benchmarks/gpu_check.py")


def _check_preset_fields(name: str, r: dict) -> None:
    mic, hrda = "_mic_" in name, "hrda" in name
    assert r["sec_per_step"] > 0 and r["images_per_s"] == pytest.approx(4 / r["sec_per_step"])
    assert r["max_memory_allocated_mib"] is None  # CUDA only
    agree = r["bf16_vs_fp32"]
    losses = {"loss_src", "loss_mix"} | ({"loss_mfm"} if name.endswith("_mfm") else set()) | (
        {"loss_mic"} if mic else set())
    assert losses <= set(agree["rel_diff"])
    assert all(agree[dtype][k] > 0 for dtype in ("fp32", "bf16") for k in losses)  # every loss compares something
    assert agree["max_rel_diff"] == max(agree["rel_diff"].values()) and 0 < agree["max_rel_diff"] < 0.05
    group = r["process_group"]
    assert group["backend"] == "gloo" and group["buckets"] >= 1 and group["gradients_unchanged"] is True
    assert r["eval"]["mode"] == ("slide" if hrda else "whole") and r["eval"]["sec_per_image"] > 0
    assert r["eval"]["cityscapes_val_minutes"] == pytest.approx(r["eval"]["sec_per_image"] * 500 / 60)


@pytest.mark.slow
def test_tiny_cpu_check_in_process_with_compile_skipped(gpu_check, tmp_path, capsys):
    """`main` in process on the cheapest preset with `--compile-preset ''`; every preset's numbers are checked on
    the documented command's report below."""
    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--presets", "gta2cs_dacs_dlv2",
                           "--compile-preset", ""]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["tiny"] and report["steps"] == 1 and report["amp"] == "none"
    assert list(report["presets"]) == ["gta2cs_dacs_dlv2"] and report["compile"] == {"skipped": "--compile-preset ''"}
    _check_preset_fields("gta2cs_dacs_dlv2", report["presets"]["gta2cs_dacs_dlv2"])
    table = capsys.readouterr().out
    assert "gta2cs_dacs_dlv2" in table and "bf16 rel" in table


def test_bad_arguments_are_one_line(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--presets", "gta2cs_dacs"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown preset 'gta2cs_dacs': choose from gta2cs_dacs_dlv2")
    assert gpu_check.main(["--device", "gpu0", "--out", str(tmp_path)]) == 2
    assert "is not a device" in capsys.readouterr().err
    assert gpu_check.main(["--tiny", "--device", "cpu", "--amp", "fp16", "--out", str(tmp_path)]) == 2
    assert "--amp fp16" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda:0", "--out", str(tmp_path)]) == 2
        assert "no CUDA device is visible" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "file")]) == 2
    assert "it is a file" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_tiny_cpu_check_command_runs_every_paper_preset_and_compile(tmp_path):
    """The command as documented, all six presets and `train.compile` (eager backend: graph capture only)."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["presets"]) == ["gta2cs_dacs_dlv2", "gta2cs_dacs_dlv2_mfm", "gta2cs_daformer_mitb5",
                                       "gta2cs_daformer_mitb5_mfm", "gta2cs_hrda_mitb5_mfm",
                                       "gta2cs_mic_hrda_dinov2l_mfm"]
    assert report["device"] == "cpu" and report["tiny"] and report["steps"] == 1 and report["amp"] == "none"
    for name, r in report["presets"].items():
        assert "error" not in r, (name, r)
        _check_preset_fields(name, r)  # every path between them: MiT, ViT + pyramid, HRDA, MIC, MFM, FD
    assert report["presets"]["gta2cs_mic_hrda_dinov2l_mfm"]["model"] == "daformer_vit_tiny"
    assert all(p in done.stdout for p in report["presets"]) and "bf16 rel" in done.stdout
    c = report["compile"]
    assert c["preset"] == "gta2cs_dacs_dlv2" and c["backend"] == "eager" and c["first_step_s"] > 0
    assert c["sec_per_step"] > 0 and c["speedup"] == pytest.approx(c["eager_sec_per_step"] / c["sec_per_step"])
    assert "compile (gta2cs_dacs_dlv2, eager)" in done.stdout
