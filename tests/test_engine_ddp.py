"""Two CPU processes with gloo (torchrun): student, teacher and Rebuilder stay identical on every rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_two_rank_gloo_training_keeps_ranks_identical(tmp_path, tiny_overrides):
    worker = Path(__file__).with_name("ddp_worker.py")
    overrides = tiny_overrides(tmp_path / "run", "uda.mfm.enabled=true", "train.max_iters=3",
                               "train.eval_interval=0", "train.panel_interval=0", "train.device=cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), "synthetic_dacs", str(tmp_path), *overrides],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for part in ("student", "teacher", "rebuilder"):
        for key, value in r0[part].items():
            assert torch.equal(value, r1[part][key]), f"{part}.{key} differs between ranks"
    assert (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "rank1").exists()
