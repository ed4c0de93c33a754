"""Shared fixtures: a tiny synthetic benchmark in the real GTA / Cityscapes layouts, prepared once per session."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Under pytest-xdist (`bash run.sh test`: one worker per core) every worker and every process a test starts (a
# sweep's runs, torchrun, the CLI in a subprocess) gets its share of the cores: torch processes with default
# threads on shared cores slow each other down many times over (measured > 10x on 2 cores).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, torch.get_num_threads() // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """Import a script that is not part of the package (benchmarks/) so its functions can be tested."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by `build(folder)` once per test session and shared by every pytest-xdist worker
    (the first builds it, the others wait on a lock and reuse it): for expensive fixtures that tests only read. A
    module or session fixture alone would be built once per worker that happens to run one of its tests."""
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent  # the run's basetemp, which holds every worker's own
    folder = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """8 source, 8 target, 4 val images of 64×128, converted with `prepare` (trainIds + RCS statistics)."""
    from mfmseg.data.prepare import prepare_dataset
    from mfmseg.data.synthetic import write_benchmark

    def build(root: Path) -> None:
        write_benchmark(root, seed=0, num_source=8, num_target=8, num_val=4, size=(64, 128))
        prepare_dataset("gta", root / "gta", nproc=1)
        prepare_dataset("cityscapes", root / "cityscapes", nproc=1)
    return built_once(tmp_path_factory, "tiny_benchmark", build)


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

    def build(folder: Path) -> None:
        train(load_config("synthetic_dacs", tiny_overrides(folder / "run", "uda.mfm.enabled=true",
                                                           "train.max_iters=2", "train.panel_interval=0",
                                                           "train.select_by=mIoU")))
    return built_once(tmp_path_factory, "tiny_mfm_run", build) / "run"


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
