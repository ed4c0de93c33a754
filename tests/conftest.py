"""Shared fixtures: a tiny synthetic benchmark in the real GTA / Cityscapes layouts, prepared once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """Import a script that is not part of the package (benchmarks/) so its functions can be tested."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """8 source, 8 target, 4 val images of 64×128, converted with `prepare` (trainIds + RCS statistics)."""
    from mfmseg.data.prepare import prepare_dataset
    from mfmseg.data.synthetic import write_benchmark

    root = tmp_path_factory.mktemp("tiny_benchmark")
    write_benchmark(root, seed=0, num_source=8, num_target=8, num_val=4, size=(64, 128))
    prepare_dataset("gta", root / "gta", nproc=1)
    prepare_dataset("cityscapes", root / "cityscapes", nproc=1)
    return root


@pytest.fixture(scope="session")
def tiny_overrides(tiny_benchmark):
    """`tiny_overrides(work_dir, *extra)`: overrides for a CPU-second-sized run on `tiny_benchmark`."""
    return lambda work_dir, *extra: _tiny_overrides(tiny_benchmark, work_dir, *extra)


@pytest.fixture(scope="session")
def tiny_mfm_run(tmp_path_factory, tiny_overrides) -> Path:
    """The work dir of one DACS+MFM run of 2 iterations on `tiny_benchmark` (evaluated at 2 with labels and the
    label-free metrics, best.pth kept by mIoU, no panels), trained once per session and shared by the tests that
    read a trained checkpoint (evaluate, predict, export) or a finished run's log. Treat it as read-only."""
    from mfmseg.config import load_config
    from mfmseg.engine.training.trainer import train

    work_dir = tmp_path_factory.mktemp("tiny_mfm_run") / "run"
    train(load_config("synthetic_dacs", tiny_overrides(work_dir, "uda.mfm.enabled=true", "train.max_iters=2",
                                                       "train.panel_interval=0", "train.select_by=mIoU")))
    return work_dir


def _tiny_overrides(root: Path, work_dir: Path, *extra: str) -> list[str]:
    return [
        f"work_dir={work_dir}",
        f"data.source.root={root / 'gta'}", f"data.target.root={root / 'cityscapes'}",
        f"data.val.root={root / 'cityscapes'}",
        "data.source.resize=[128,64]", "data.target.resize=[128,64]", "data.val.resize=[128,64]",
        "data.source.crop=[64,64]", "data.target.crop=[64,64]", "data.num_workers=0",
        "data.rcs.min_pixels=10",
        "train.max_iters=4", "train.eval_interval=2", "train.checkpoint_interval=2", "train.log_interval=1",
        "train.panel_interval=2", *extra,
    ]
