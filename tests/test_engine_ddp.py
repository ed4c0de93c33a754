"""Two CPU processes with gloo (torchrun, tests/ddp_worker.py): ranks stay identical, evaluation is sharded and equals
a one-rank evaluation, gradient averaging and buffer broadcast, and an error on one rank ends every rank."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(mode: str, out_dir: Path, overrides: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), mode, "synthetic_dacs", str(out_dir), *overrides],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_two_rank_gloo_training_keeps_ranks_identical(tmp_path, tiny_overrides):
    overrides = tiny_overrides(tmp_path / "run", "uda.mfm.enabled=true", "train.max_iters=3",
                               "train.eval_interval=0", "train.panel_interval=0", "train.device=cpu")
    proc = torchrun("train", tmp_path, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for part in ("student", "teacher", "rebuilder"):
        for key, value in r0[part].items():
            assert torch.equal(value, r1[part][key]), f"{part}.{key} differs between ranks"
    assert (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "rank1").exists()


@pytest.mark.slow
def test_two_rank_evaluation_is_sharded_and_equals_one_rank_and_collectives_average(tmp_path, tiny_overrides):
    proc = torchrun("collectives", tmp_path, tiny_overrides(tmp_path / "run", "train.device=cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"collectives{r}.json").read_text()) for r in (0, 1))
    assert r0["read"] == [0, 2] and r1["read"] == [1, 3]  # 4 val images: every rank evaluates its half
    assert r0["sharded"] == r1["sharded"] == r0["one_rank"]
    assert r0["sharded"]["aAcc"] > 0
    # a: averaged; b: rank 1's gradient averaged with rank 0's zeros; c (no rank) and d (frozen): no gradient
    for r in (r0, r1):
        assert r["grads"] == [[1.5] * 3, [2.0] * 3, None, None]
        assert r["bn"] == [[1.0, 1.0], 7, [3.0 + (r is r1)] * 2]  # buffers from rank 0; parameters untouched


@pytest.mark.slow
@pytest.mark.parametrize("where", ["data", "step"])
def test_an_error_on_one_rank_ends_every_rank_with_that_error(tmp_path, tiny_overrides, where):
    """Rank 1 fails (in data loading, or inside the step) while rank 0 waits in a collective: no barrier pairs
    with rank 0's collective, the run ends well within the process-group timeout, and rank 1's error is printed,
    not a misleading divergence message."""
    overrides = tiny_overrides(tmp_path / "run", "train.max_iters=4", "train.eval_interval=0",
                               "train.panel_interval=0", "train.device=cpu", "train.dist_timeout_s=60")
    proc = torchrun(f"fail-{where}", tmp_path, overrides, timeout=300)
    ended = time.time()
    assert proc.returncode != 0
    failed_at = re.search(r"injected failure: rank 1 .* at t=([\d.]+)", proc.stderr)
    assert failed_at, proc.stderr[-3000:]
    assert "diverged" not in proc.stderr
    assert ended - float(failed_at[1]) < 30, f"the ranks took {ended - float(failed_at[1]):.0f} s to stop"
