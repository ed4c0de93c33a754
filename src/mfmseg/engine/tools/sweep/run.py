"""`run_sweep`: plan, lock OUT, train what is left, write the results after every finished run."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence


from mfmseg.engine.tools.sweep.aggregation import aggregate, run_record
from mfmseg.engine.tools.sweep.plan import RunSpec, SweepRun, check_args, parse_spec, plan_sweep
from mfmseg.engine.tools.sweep.processes import execute, threads_per_job
from mfmseg.engine.tools.sweep.progress import LiveLine, log_tail
from mfmseg.engine.tools.sweep.results import format_number, write_results
from mfmseg.errors import UserError


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[list[int]]:
    """One sweep per OUT at a time: two would train the same work dirs. The lock lives as long as a process holds
    its file: the sweep and, through the descriptor they inherit, its trainings (a `kill -9` of the sweep alone
    leaves them running, and a rerun must not start the same runs beside them). Yields the fds to pass on."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield []
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".sweep.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another mfmseg sweep (or a training it started) is running in {out}; wait for it or "
                            f"use another --out") from None
        yield [f.fileno()]


@dataclass
class _Progress:
    total: int
    finished: int = 0
    failed: list[SweepRun] = field(default_factory=list)

    def report(self, run: SweepRun, code: int, seconds: float) -> None:
        self.finished += 1
        where = f"[{self.finished}/{self.total}] {run.spec.label} seed {run.seed}"
        left = f"{self.total - self.finished} left"
        if run.status == "done":
            miou = format_number((run.summary or {}).get("mIoU"))
            print(f"{where}: mIoU {miou} in {seconds:.0f} s, {left}", flush=True)
            return
        self.failed.append(run)
        tail = "\n".join(f"    | {line}" for line in log_tail(run.log))
        print(f"{where}: FAILED (exit {code}) after {seconds:.0f} s, {left}; log: {run.log}\n{tail}", flush=True)


def _finish_run(run: SweepRun, code: int) -> None:
    summary_path = run.work_dir / "summary.json"
    if code == 0 and summary_path.is_file():
        run.status, run.summary = "done", json.loads(summary_path.read_text())
    else:
        run.status = "failed"
        run.error = (log_tail(run.log, 1) or [f"exit {code}"])[0]


def run_sweep(specs: Sequence[str | RunSpec], seeds: Sequence[int], out: str | os.PathLike,
              baseline: str | None = None, jobs: int = 1, common: Sequence[str] = ()) -> dict:
    """Train every spec with every seed under `out` (resuming what is there) and aggregate the results.

    Returns the dict written to `out/results.json`: per-label statistics, every run, and `failed` (the runs that
    did not finish; the CLI exits 1 when there are any). Raises `UserError` for bad specs before anything trains.
    """
    out = Path(out)
    specs = [s if isinstance(s, RunSpec) else parse_spec(s) for s in specs]
    check_args(specs, seeds, baseline, jobs)
    runs = plan_sweep(specs, seeds, out, list(common))
    with _exclusive(out) as lock_fds:
        for run in runs:
            if run.state == "done":
                _finish_run(run, 0)
        todo = [r for r in runs if r.status != "done"]
        meta = {"out": str(out), "specs": {s.label: shlex.join([s.config, *s.overrides]) for s in specs},
                "common": list(common), "jobs": jobs}

        def results() -> dict:
            res = aggregate([run_record(r) for r in runs], [s.label for s in specs], seeds, baseline)
            return {**meta, **res, "failed": [run_record(r) for r in runs if r.status == "failed"]}

        resumed = sum(r.state == "resume" for r in todo)
        print(f"sweep: {len(specs)} configs × {len(seeds)} seeds = {len(runs)} runs; {len(runs) - len(todo)} "
              f"finished earlier, {resumed} resume from a checkpoint, {len(todo) - resumed} to start; "
              f"{jobs} at a time, {threads_per_job(jobs)} threads each -> {out / 'results.md'}", flush=True)
        progress = _Progress(total=len(todo))
        if len(todo) < len(runs):
            write_results(out, results())

        def on_done(run: SweepRun, code: int, seconds: float) -> None:
            _finish_run(run, code)
            progress.report(run, code, seconds)
            write_results(out, results())

        execute(todo, jobs, on_done, pass_fds=lock_fds, live=LiveLine(sys.stdout))
        final = results()
        write_results(out, final)
    return final
