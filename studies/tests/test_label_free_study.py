"""The label-free validation study's analysis (studies/label_free/label_free_study.py) on logs with answers worked
out by hand."""

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def lfs(study_script):
    return study_script("label_free/label_free_study.py")


def write_run(folder: Path, mious: list[float], im: list[float], finished: bool = True) -> None:
    folder.mkdir(parents=True)
    rows = [{"kind": "train", "iter": 5, "loss_src": 1.0}]
    rows += [{"kind": "val", "iter": 50 * (i + 1), "mIoU": m, "label_free": {"im": v, "entropy": 1 - v}}
             for i, (m, v) in enumerate(zip(mious, im))]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if finished:
        (folder / "summary.json").write_text("{}")


def test_spearman_by_hand(lfs):
    assert lfs.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert lfs.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (0, 1, 2) vs (0, 2, 1): 1 - 6 * 2 / (3 * 8) = 0.5
    assert lfs.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert lfs.spearman([1, 1, 1], [1, 2, 3]) is None
    assert list(lfs.ranks([5, 1, 5])) == [1.5, 0.0, 1.5]


def test_regrets_per_label_and_unfinished_runs_skipped(lfs, tmp_path):
    sweep = tmp_path / "sweep"
    # A degrading run: peak 40 at the 2nd evaluation, last 30; im peaks with it, so selecting by im has no regret.
    write_run(sweep / "runs" / "hot" / "seed0", [20, 40, 35, 30], [0.1, 0.5, 0.4, 0.3])
    # A run that improves: "last" is the peak; im peaks one evaluation early (regret 2).
    write_run(sweep / "runs" / "calm" / "seed0", [10, 20, 28, 30], [0.1, 0.2, 0.4, 0.3])
    write_run(sweep / "runs" / "calm" / "seed1", [0, 0, 0, 99], [0, 0, 0, 1], finished=False)
    runs = lfs.read_runs([sweep])
    assert sorted(lfs.label_of(r) for r in runs) == ["calm", "hot"]
    assert len(lfs.read_runs([sweep], partial=True)) == 3
    table = {row["metric"]: row for row in lfs.study(runs)}
    assert table["im"]["regret_vs_oracle"] == pytest.approx((0 + 2) / 2)
    assert table["im"]["regret_vs_last"] == pytest.approx(((30 - 40) + (30 - 28)) / 2)
    assert table["im"]["beats_last_on"] == 1
    assert table["entropy"]["rho_within"] == pytest.approx(table["im"]["rho_within"])  # entropy = 1 - im, lower better
    lines = {line.split(" | ")[0]: line for line in lfs.by_label(runs, ["im"]).splitlines()}
    # | label | runs | final | peak | regret last | regret im |
    assert lines["| hot"].split(" | ")[2:] == ["30.00", "40.00", "10.00", "0.00 |"]
    assert lines["| calm"].split(" | ")[2:] == ["30.00", "30.00", "0.00", "2.00 |"]
    figure = lfs.plot(runs, ["im", "entropy"], tmp_path / "fig")
    assert figure.stat().st_size > 10_000
