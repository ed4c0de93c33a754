"""The long-schedule study's analysis (studies/mfm/study_mfm_long.py) on logs with answers worked out by hand."""

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def study(study_script):
    return study_script("mfm/study_mfm_long.py")


def write_run(folder: Path, val: dict[int, float], wall: dict[int, float], q: float, finished: bool = True,
              torn_tail: bool = False) -> None:
    """A run's metrics.jsonl: q logged every 100 iterations up to its last evaluation, one val row per entry of
    `val` (mIoU, and the IoU of two classes: wall as given, road fixed at 50)."""
    folder.mkdir(parents=True)
    last = max(val)
    rows = [{"kind": "train", "iter": it, "pseudo_q": q, "loss_mfm": 0.1} for it in range(100, last + 1, 100)]
    rows += [{"kind": "val", "iter": it, "mIoU": m, "per_class_iou": {"road": 50.0, "wall": wall[it]}}
             for it, m in val.items()]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    (folder / "metrics.jsonl").write_text(text + ('{"kind": "val", "it' if torn_tail else ""))
    (folder / "config.yaml").write_text(f"train:\n  max_iters: {last if finished else 800}\n")
    if finished:
        (folder / "summary.json").write_text("{}")


def test_paired_deltas_and_per_class_at_the_latest_point_leave_a_partial_seed_out(study, tmp_path):
    runs_dir = tmp_path / "sweep" / "runs"
    write_run(runs_dir / "base" / "seed0", {400: 30.0, 800: 40.0}, {400: 10.0, 800: 20.0}, q=0.6)
    write_run(runs_dir / "base" / "seed1", {400: 32.0, 800: 44.0}, {400: 10.0, 800: 30.0}, q=0.6)
    write_run(runs_dir / "mfm" / "seed0", {400: 31.0, 800: 46.0}, {400: 12.0, 800: 50.0}, q=0.8)
    # seed 1 was killed after its first evaluation, mid-write: it counts at 400 only
    write_run(runs_dir / "mfm" / "seed1", {400: 31.0}, {400: 90.0}, q=0.8, finished=False, torn_tail=True)
    runs = study.read_sweeps([tmp_path / "sweep"])
    assert runs["mfm"][1]["done"] is False and runs["mfm"][0]["max_iters"] == 800

    table, curves = study.delta_table(runs, [("mfm", "base")], [400, 800])
    # at 400: +1 (seed 0) and -1 (seed 1): mean 0, std sqrt(2); at 800 seed 0 alone: +6
    assert curves["mfm − base"] == {400: [1.0, -1.0], 800: [6.0]}
    assert "+0.00 ± 1.41 (2, 1/2)" in table and "+6.00 (1, 1/1)" in table

    lines = study.class_delta_table(runs, [("mfm", "base")]).splitlines()
    assert lines[0] == "| comparison | road | wall |"
    # seed 1's +80 wall at iteration 400 is not averaged into the iteration-800 row
    assert lines[2] == "| mfm − base (n=1, it 800) | +0.0 | +30.0 |"

    runs_table = study.runs_table(runs, [400, 800])
    assert "| mfm | 1 | 31.00 | — | partial (400 it) |" in runs_table

    q_rows = {tuple(line.split(" | ")[:2]): line for line in study.q_table(runs).splitlines()}
    # the last third of 800 iterations (533, 800]: q 0.8 and MFM loss 0.1 at 600, 700, 800; none for a partial run
    assert q_rows[("| mfm", "0")].split(" | ")[2] == "0.80 / 0.100"
    assert q_rows[("| mfm", "1")].split(" | ")[2] == "—"


def test_recorded_runs_pair_with_logged_ones_and_a_log_beats_its_transcription(study, tmp_path):
    runs_dir = tmp_path / "sweep" / "runs"
    write_run(runs_dir / "base" / "seed1", {400: 32.0, 800: 44.0}, {400: 10.0, 800: 30.0}, q=0.6)
    write_run(runs_dir / "mfm" / "seed1", {400: 31.0, 800: 46.0}, {400: 12.0, 800: 50.0}, q=0.8)
    recorded = tmp_path / "lost.json"
    recorded.write_text(json.dumps({"base": {"0": {"400": 30.0, "800": 40.0}, "1": {"800": 99.0}},
                                    "mfm": {"0": {"400": 31.5, "800": 43.25}}}))
    runs = study.merge_runs(study.read_sweeps([tmp_path / "sweep"]), study.read_recorded(recorded))
    assert runs["base"][1]["val"] == {400: 32.0, 800: 44.0}  # the log, not the recorded 99.0
    table, curves = study.delta_table(runs, [("mfm", "base")], [400, 800])
    # seed 0 (recorded): +1.5, +3.25; seed 1 (logged): -1, +2
    assert curves["mfm − base"] == {400: [1.5, -1.0], 800: [3.25, 2.0]}
    assert "| mfm | 0 | 31.50 | 43.25 | done (log lost) |" in study.runs_table(runs, [400, 800])
    # no per-class IoU or q was recorded: those tables hold the logged seed only
    assert "(n=1, it 800)" in study.class_delta_table(runs, [("mfm", "base")])
    assert [line.split(" | ")[1] for line in study.q_table(runs).splitlines()[2:]] == ["1", "1"]
