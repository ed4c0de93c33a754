"""`mfmseg sweep`: spec parsing and validation, the pure aggregation on hand-made summaries, the subprocess
orchestration with a stand-in trainer (failures, resume, threads, logs), and one tiny real sweep end to end."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfmseg.cli import main
from mfmseg.engine.tools.sweep import processes, progress
from mfmseg.engine.tools.sweep.aggregation import aggregate, mean_std, paired_difference, per_class_means
from mfmseg.engine.tools.sweep.plan import RunSpec, SweepRun, config_difference, parse_spec, run_state
from mfmseg.engine.tools.sweep.processes import slot_env, threads_per_job, train_argv, visible_gpus
from mfmseg.engine.tools.sweep.results import results_markdown
from mfmseg.engine.tools.sweep.run import run_sweep
from mfmseg.errors import UserError


# ---- specs ---------------------------------------------------------------------------------------------------
def test_parse_spec_label_config_and_overrides():
    assert parse_spec("synthetic_dacs") == RunSpec("synthetic_dacs", "synthetic_dacs", (), "synthetic_dacs")
    s = parse_spec("mfm=synthetic_dacs_mfm uda.mfm.mask_ratio=0  'uda.pseudo_margins=[0, 0, 0, 0]'")
    assert (s.label, s.config) == ("mfm", "synthetic_dacs_mfm")
    assert s.overrides == ("uda.mfm.mask_ratio=0", "uda.pseudo_margins=[0, 0, 0, 0]")
    assert parse_spec("configs/my_run.yaml train.max_iters=5").label == "my_run"


@pytest.mark.parametrize("text, match", [
    ("", "empty sweep spec"),
    ("a/b=synthetic_dacs", "label 'a/b'"),
    ("x= seed=1", "label 'x'"),
    ("synthetic_dacs seed=3", "seed= is set by the sweep"),
    ("synthetic_dacs work_dir=/tmp/x", "work_dir= is set by the sweep"),
    ("synthetic_dacs 'unclosed", "No closing quotation"),
])
def test_parse_spec_errors(text, match):
    with pytest.raises(UserError, match=match):
        parse_spec(text)


def test_bad_specs_fail_in_one_line_before_any_run(tmp_path, capsys):
    out = tmp_path / "sw"
    cases = [
        (["synthetic_dacs", "synthetic_dacs uda.mfm.enabled=true"], [], "two sweep specs have the label"),
        (["synthetic_dacs", "m=synthetic_dacs uda.mfm.mask_raito=0"], [], "mfm.mask_raito.*did you mean"),
        (["synthetic_dacs", "synthetic_dac_mfm"], [], "no config file or preset named 'synthetic_dac_mfm'"),
        (["synthetic_dacs"], ["--set", "train.max_iter=3"], "train.max_iter.*did you mean 'train.max_iters'"),
        (["synthetic_dacs"], ["--set", "seed=3"], "--set: seed= is set by the sweep"),
        (["synthetic_dacs"], ["--baseline", "dacs"], "--baseline 'dacs' is not a label"),
        (["synthetic_dacs"], ["--seeds", "1", "1"], "distinct seeds"),
        (["synthetic_dacs"], ["--jobs", "0"], "--jobs 0 must be at least 1"),
    ]
    for specs, extra, match in cases:
        assert main(["sweep", *specs, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert re.search(match, err), (match, err)
    assert not (out / "runs").exists()  # the bad spec came last: nothing started


def test_finished_run_with_other_settings_is_an_error(tmp_path):
    wd = tmp_path / "runs" / "synthetic_dacs" / "seed0"
    wd.mkdir(parents=True)
    from mfmseg.config import load_config, to_dict

    cfg = to_dict(load_config("synthetic_dacs", ["train.max_iters=200", f"work_dir={wd}"]))
    (wd / "summary.json").write_text(json.dumps({"mIoU": 1.0, "config": cfg}))
    assert run_state(wd) == "done"
    with pytest.raises(UserError, match=r"other settings \(train.max_iters: 200 there, 300 now\)"):
        run_sweep(["synthetic_dacs"], [0], tmp_path, common=["train.max_iters=300"])


def test_config_difference_ignores_work_dir_resume_and_keys_of_other_versions():
    saved = {"work_dir": "a", "seed": 0, "train": {"resume": True, "max_iters": 4, "old_key": 1}}
    assert config_difference(saved, {"work_dir": "b", "seed": 0, "train": {"resume": False, "max_iters": 4,
                                                                           "new_key": 2}}) is None
    assert config_difference(saved, {"seed": 1}) == "seed: 0 there, 1 now"


def test_run_state_and_train_argv(tmp_path):
    wd = tmp_path / "seed0"
    assert run_state(wd) == "fresh"
    wd.mkdir()
    (wd / "metrics.jsonl").write_text("")
    assert run_state(wd) == "fresh"
    (wd / "latest.pth").write_bytes(b"")
    assert run_state(wd) == "resume"
    run = SweepRun(RunSpec("x", "synthetic_dacs", ("a.b=1",)), 0, wd, ["a.b=1", f"work_dir={wd}", "seed=0"], "resume")
    assert train_argv(run)[1:] == ["-m", "mfmseg", "train", "synthetic_dacs", "a.b=1", f"work_dir={wd}", "seed=0",
                                   "train.resume=true"]
    assert run.log == tmp_path / "seed0.log"


def test_threads_per_job_divides_cores_and_respects_the_users_cap(monkeypatch):
    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_per_job(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert [threads_per_job(n) for n in (1, 4)] == [3, 2]


# ---- aggregation (numbers by hand) ---------------------------------------------------------------------------
def _record(label, seed, miou, per_class=None, status="done", miou16=None):
    return {"label": label, "seed": seed, "status": status, "mIoU": miou, "mIoU16": miou16, "mIoU13": None,
            "per_class_iou": per_class or {}, "work_dir": f"runs/{label}/seed{seed}", "log": "x.log"}


def test_mean_std_and_paired_difference_by_hand():
    assert mean_std([20.0, 22.0, 27.0]) == {"n": 3, "mean": 23.0, "std": pytest.approx(math.sqrt(13))}
    assert mean_std([5.0]) == {"n": 1, "mean": 5.0, "std": None}
    assert mean_std([]) == {"n": 0, "mean": None, "std": None}
    d = paired_difference({"0": 20.0, "1": 22.0, "2": 27.0}, {"0": 21.0, "1": 21.0, "2": 24.0})
    assert d == {"n": 3, "mean": 1.0, "std": 2.0, "positive": 2, "per_seed": {"0": -1.0, "1": 1.0, "2": 3.0}}
    d = paired_difference({"0": 25.0, "2": 23.0}, {"0": 21.0, "1": 21.0, "2": 24.0})  # seed 1 missing: unpaired
    assert d == {"n": 2, "mean": 1.5, "std": pytest.approx(math.sqrt(12.5)), "positive": 1,
                 "per_seed": {"0": 4.0, "2": -1.0}}
    assert paired_difference({"3": 1.0}, {"0": 1.0}) is None


def test_per_class_means_skip_absent_classes():
    means = per_class_means([{"road": 50.0, "car": None, "bus": None}, {"road": 60.0, "car": 10.0, "bus": None},
                             {"road": 70.0, "car": 20.0}])
    assert means == {"road": 60.0, "car": 15.0, "bus": None}


def _hand_results():
    records = [
        _record("A", 0, 20.0, {"road": 50.0, "car": None}), _record("A", 1, 22.0, {"road": 60.0, "car": 10.0}),
        _record("A", 2, 27.0, {"road": 70.0, "car": 20.0}),
        _record("B", 0, 21.0, {"road": 40.0, "car": 0.0}), _record("B", 1, 21.0, {"road": 40.0, "car": 0.0}),
        _record("B", 2, 24.0, {"road": 43.0, "car": 3.0}),
        _record("C", 0, 25.0, miou16=30.0), _record("C", 1, None, status="failed"), _record("C", 2, 23.0),
    ]
    return aggregate(records, ["A", "B", "C"], [0, 1, 2], baseline="B")


def test_aggregate_by_hand():
    res = _hand_results()
    a, b, c = (res["labels"][k] for k in "ABC")
    assert a["mIoU"] == {"n": 3, "mean": 23.0, "std": pytest.approx(math.sqrt(13)),
                         "per_seed": {"0": 20.0, "1": 22.0, "2": 27.0}}
    assert a["vs_baseline"] == {"n": 3, "mean": 1.0, "std": 2.0, "positive": 2,
                                "per_seed": {"0": -1.0, "1": 1.0, "2": 3.0}}
    assert b["vs_baseline"] is None and b["mIoU"]["mean"] == 22.0 and b["mIoU"]["std"] == pytest.approx(math.sqrt(3))
    assert c["mIoU"]["n"] == 2 and c["vs_baseline"]["mean"] == 1.5 and c["vs_baseline"]["positive"] == 1
    assert a["per_class_iou"] == {"road": 60.0, "car": 15.0} and b["per_class_iou"] == {"road": 41.0, "car": 1.0}
    assert c["mIoU16"] == {"n": 1, "mean": 30.0, "std": None, "per_seed": {"0": 30.0}}
    assert a["mIoU13"]["n"] == 0 and len(res["runs"]) == 9
    json.dumps(res, allow_nan=False)  # strict JSON: no NaN anywhere


def test_results_markdown_by_hand():
    md = results_markdown({**_hand_results(), "out": "sw", "specs": {"A": "synthetic_dacs"}, "common": ["x=1"]})
    assert "| label | n | mIoU | seed 0 | seed 1 | seed 2 | Δ mIoU vs B (paired) | Δ > 0 | mIoU16 |" in md
    assert "| A | 3 | 23.00 ± 3.61 | 20.00 | 22.00 | 27.00 | +1.00 ± 2.00 | 2/3 | — |" in md
    assert "| B | 3 | 22.00 ± 1.73 | 21.00 | 21.00 | 24.00 | baseline |  | — |" in md
    assert "| C | 2 | 24.00 ± 1.41 | 25.00 | — | 23.00 | +1.50 ± 3.54 | 1/2 | 30.00 |" in md
    assert "mIoU13" not in md  # no summary has it
    assert "| road | 60.00 | 41.00 | — |" in md and "| car | 15.00 | 1.00 | — |" in md
    assert "8 of 9 runs finished" in md and "not finished: `C` seed 1 (failed" in md
    assert "- `A`: `synthetic_dacs`" in md and "- every run: `x=1`" in md


# ---- orchestration with a stand-in trainer (no torch in the children) ----------------------------------------
FAKE_TRAIN = r"""
import json, os, sys
from pathlib import Path
work_dir, seed, label, state = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
print("training", label, seed, state, flush=True)
if label == "broken":
    print("error: data.source.root=/nope does not exist", file=sys.stderr)
    sys.exit(2)
work_dir.mkdir(parents=True, exist_ok=True)
assert not (work_dir / "stale.txt").exists()
miou = {"a": 20.0, "b": 30.0}[label] + seed
def target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # the descriptor of the listing itself
        return ""
lock = any(target(fd).endswith(".sweep.lock") for fd in os.listdir("/proc/self/fd")) \
    if os.path.isdir("/proc/self/fd") else None
(work_dir / "summary.json").write_text(json.dumps({
    "mIoU": miou, "mIoU16": None, "mIoU13": None, "per_class_iou": {"road": miou, "car": None}, "iters": 4,
    "state": state, "threads": os.environ["OMP_NUM_THREADS"], "mkl": os.environ["MKL_NUM_THREADS"], "lock": lock}))
"""


@pytest.fixture
def fake_trainer(monkeypatch):
    monkeypatch.setattr(processes, "train_argv", lambda run: [sys.executable, "-c", FAKE_TRAIN, str(run.work_dir),
                                                              str(run.seed), run.spec.label, run.state])


def test_failed_runs_are_reported_the_rest_goes_on_and_a_rerun_continues(tmp_path, capsys, fake_trainer):
    out = tmp_path / "sw"
    (out / "runs" / "a" / "seed1").mkdir(parents=True)
    (out / "runs" / "a" / "seed1" / "latest.pth").write_bytes(b"")  # killed after a checkpoint: resumes
    (out / "runs" / "b" / "seed0").mkdir(parents=True)
    (out / "runs" / "b" / "seed0" / "stale.txt").write_text("")  # killed before one: starts again, cleanly
    argv = ["sweep", "a=synthetic_dacs", "b=synthetic_dacs uda.mfm.enabled=true", "broken=synthetic_source_only",
            "--seeds", "0", "1", "--baseline", "a", "--out", str(out), "--jobs", "2"]
    assert main(argv) == 1
    text = capsys.readouterr()
    assert "6 runs; 0 finished earlier, 1 resume from a checkpoint, 5 to start" in text.out
    assert "broken seed 0: FAILED (exit 2)" in text.out and "| error: data.source.root=/nope" in text.out
    assert "a seed 1: mIoU 21.00 in" in text.out and "2 run(s) failed" in text.err
    assert len([line for line in text.out.splitlines() if line.startswith("[")]) == 6
    res = json.loads((out / "results.json").read_text())
    assert res["labels"]["b"]["vs_baseline"] == {"n": 2, "mean": 10.0, "std": 0.0, "positive": 2,
                                                 "per_seed": {"0": 10.0, "1": 10.0}}
    assert [(r["label"], r["seed"]) for r in res["failed"]] == [("broken", 0), ("broken", 1)]
    assert res["failed"][0]["error"] == "error: data.source.root=/nope does not exist"
    assert res["labels"]["broken"]["mIoU"]["n"] == 0 and (out / "results.png").stat().st_size > 0
    s = json.loads((out / "runs" / "a" / "seed1" / "summary.json").read_text())
    assert s["state"] == "resume" and s["threads"] == s["mkl"] == str(threads_per_job(2))
    assert s["lock"] is (True if Path("/proc/self/fd").is_dir() else None)  # children hold the sweep's lock
    assert json.loads((out / "runs" / "a" / "seed0" / "summary.json").read_text())["state"] == "fresh"
    assert "start: " in (out / "runs" / "broken" / "seed0.log").read_text()
    assert "| a | 2 | 20.50 ± 0.71 | 20.00 | 21.00 | baseline |" in (out / "results.md").read_text()

    mtime = (out / "runs" / "a" / "seed0" / "summary.json").stat().st_mtime_ns
    assert main(argv) == 1  # again: only the failed runs are tried
    text = capsys.readouterr().out
    assert "4 finished earlier, 0 resume from a checkpoint, 2 to start" in text
    assert len([line for line in text.splitlines() if line.startswith("[")]) == 2
    assert (out / "runs" / "a" / "seed0" / "summary.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "results.json").read_text())["labels"] == res["labels"]

    with pytest.raises(UserError, match="two sweep specs"):  # the Python API raises what the CLI prints
        run_sweep(["a=synthetic_dacs", "a=synthetic_dacs"], [0], out)


def test_one_sweep_per_out_folder(tmp_path, fake_trainer):
    (tmp_path / "sw").mkdir()
    with open(tmp_path / "sw" / ".sweep.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another mfmseg sweep .* is running in"):
            run_sweep(["a=synthetic_dacs"], [0], tmp_path / "sw")
    res = run_sweep(["a=synthetic_dacs"], [0], tmp_path / "sw")
    assert res["labels"]["a"]["mIoU"]["mean"] == 20.0 and res["failed"] == []


SLEEPING_SWEEP = r"""
import os, sys
from mfmseg.cli import main
from mfmseg.engine.tools.sweep import processes
pids = sys.argv[1]
child = "import os, time; open(%r, 'a').write(f'{os.getpid()}\\n'); time.sleep(600)" % pids
processes.train_argv = lambda run: [sys.executable, "-c", child]
sys.exit(main(["sweep", "a=synthetic_dacs", "--seeds", "0", "1", "--jobs", "2", "--out", sys.argv[2]]))
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see that the children are gone")
def test_sigterm_stops_the_sweep_and_its_trainings(tmp_path):
    """A scheduler's time limit sends SIGTERM: the sweep ends in one line and takes its trainings with it
    (Python's default would end the parent alone and leave the children training, holding the lock)."""
    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", SLEEPING_SWEEP, str(pids), str(tmp_path / "sw")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.time() < deadline:
        time.sleep(0.1)
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2, "the sweep never started its two trainings"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    for pid in children:
        with pytest.raises(ProcessLookupError):  # ended and reaped by the sweep, not an orphan
            os.kill(pid, 0)


# ---- a real sweep ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_sweep_table_matches_summaries_and_a_rerun_redoes_only_the_missing_run(tmp_path, tiny_overrides,
                                                                                      capsys):
    out = tmp_path / "sw"
    common = [o for o in tiny_overrides(tmp_path / "unused") if not o.startswith("work_dir=")]
    common += ["train.panel_interval=0", "train.max_iters=2", "train.eval_interval=2"]
    argv = ["sweep", "synthetic_dacs", "so=synthetic_dacs uda.method=source_only", "--seeds", "0", "1",
            "--baseline", "so", "--out", str(out), *(a for o in common for a in ("--set", o))]
    assert main(argv) == 0
    capsys.readouterr()
    summaries = {(label, seed): json.loads((out / "runs" / label / f"seed{seed}" / "summary.json").read_text())
                 for label in ("synthetic_dacs", "so") for seed in (0, 1)}
    assert all(s["iters"] == 2 and s["config"]["seed"] == seed for (_, seed), s in summaries.items())
    assert summaries["so", 0]["config"]["uda"]["method"] == "source_only"
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    for label in ("synthetic_dacs", "so"):
        vals = [summaries[label, seed]["mIoU"] for seed in (0, 1)]
        assert res["labels"][label]["mIoU"]["per_seed"] == {"0": vals[0], "1": vals[1]}
        assert f"| {label} | 2 | {mean_std(vals)['mean']:.2f} ± {mean_std(vals)['std']:.2f} | " \
               f"{vals[0]:.2f} | {vals[1]:.2f} |" in md
    diffs = [summaries["synthetic_dacs", s]["mIoU"] - summaries["so", s]["mIoU"] for s in (0, 1)]
    assert res["labels"]["synthetic_dacs"]["vs_baseline"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert (out / "results.png").stat().st_size > 0 and (out / "runs" / "so" / "seed1.log").is_file()

    target = out / "runs" / "so" / "seed1" / "summary.json"
    others = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/seed*/summary.json") if p != target}
    target.unlink()  # its checkpoint remains: the rerun finishes it from there
    assert main(argv) == 0
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(progress) == 1 and progress[0].startswith("[1/1] so seed 1: mIoU")
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())
    assert json.loads(target.read_text())["mIoU"] == summaries["so", 1]["mIoU"]
    assert json.loads((out / "results.json").read_text())["labels"] == res["labels"]


def test_jobs_spread_over_the_visible_gpus(monkeypatch):
    env = {"OMP_NUM_THREADS": "2"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    gpus = visible_gpus()
    assert gpus == ["2", "5"]
    assert [slot_env(env, slot, 3, gpus).get("CUDA_VISIBLE_DEVICES") for slot in range(3)] == ["2", "5", "2"]
    assert slot_env(env, 0, 1, gpus) == env  # one job: the parent's devices, cuda:N overrides still valid
    assert slot_env(env, 1, 2, []) == env  # no GPU: nothing set
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


class _Terminal:
    """A stream that says it is a terminal and keeps what was written to it."""

    def __init__(self, tty: bool = True) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_live_progress_of_running_trainings(tmp_path):
    """On a terminal, the running trainings' iteration, it/s and ETA, from each run's newest complete log row;
    'starting' before the first row; nothing at all when the output is a log."""
    runs = [SweepRun(RunSpec("dacs", "synthetic_dacs"), seed, tmp_path / f"seed{seed}", [], max_iters=100)
            for seed in (0, 1)]
    runs[0].work_dir.mkdir()
    (runs[0].work_dir / "metrics.jsonl").write_text(
        '{"kind": "train", "iter": 30, "it_per_s": 1.0}\n{"kind": "val", "iter": 40, "mIoU": 3.0}\n'
        '{"kind": "train", "iter": 40, "it_per_s": 2.0}\n{"kind": "train", "iter": 41, "it_')  # a row being written
    assert progress.run_progress(runs[0]) == "dacs s0: 40/100 it, 2.00 it/s, ETA 0:30"
    assert progress.run_progress(runs[1]) == "dacs s1: starting"
    terminal = _Terminal()
    live = progress.LiveLine(terminal)
    live.draw(runs)
    live.draw(runs)  # within a second: not redrawn
    assert terminal.text == "\rdacs s0: 40/100 it, 2.00 it/s, ETA 0:30 | dacs s1: starting\x1b[K"
    live.clear()
    assert terminal.text.endswith("\r\x1b[K")
    log = _Terminal(tty=False)
    progress.LiveLine(log).draw(runs)
    assert log.text == ""
