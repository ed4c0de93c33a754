"""Running the plan: one `mfmseg train` subprocess per run, `--jobs` at a time, threads and GPUs shared out."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence


import mfmseg
from mfmseg.engine.tools.sweep.plan import SweepRun
from mfmseg.engine.tools.sweep.progress import LiveLine


def threads_per_job(jobs: int) -> int:
    """max(1, cores // jobs), capped by an OMP_NUM_THREADS the user set: N torch processes with default threads
    each slow each other down many times over on a small machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, cores // jobs)
    user = os.environ.get("OMP_NUM_THREADS", "")
    return min(n, int(user)) if user.isdigit() and int(user) > 0 else n


def _child_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(threads_per_job(jobs))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.setdefault("TQDM_MININTERVAL", "30")  # a log file, not a terminal: a progress line every 30 s
    src = str(Path(mfmseg.__file__).resolve().parent.parent)  # children run the code the parent runs
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def visible_gpus() -> list[str]:
    """The GPUs children may use, as CUDA_VISIBLE_DEVICES names them (ids or UUIDs): the parent's list when set,
    else one per GPU the NVIDIA driver lists (read from /proc: the parent never imports torch)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def slot_env(env: dict[str, str], slot: int, jobs: int, gpus: Sequence[str]) -> dict[str, str]:
    """With several jobs and GPUs, job slot i sees GPU i mod N only (as its cuda:0); otherwise every child would
    train on cuda:0. One job keeps the parent's devices (a `train.device=cuda:N` override still works)."""
    if jobs < 2 or not gpus:
        return env
    return {**env, "CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}


def train_argv(run: SweepRun) -> list[str]:
    """The child's command line: exactly what a user would type to train this run alone."""
    resume = ["train.resume=true"] if run.state == "resume" else []
    return [sys.executable, "-m", "mfmseg", "train", run.spec.config, *run.overrides, *resume]


def _start(run: SweepRun, env: dict[str, str], pass_fds: Sequence[int]) -> tuple[subprocess.Popen, object]:
    if run.state == "fresh" and run.work_dir.exists():
        shutil.rmtree(run.work_dir)  # a run killed before its first checkpoint: stale metrics.jsonl, tb events
    run.work_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = train_argv(run)
    log = open(run.log, "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if run.state == 'resume' else 'start'}: "
              f"{shlex.join(argv)}\n")
    log.flush()
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            pass_fds=tuple(pass_fds)), log


def execute(runs: Sequence[SweepRun], jobs: int, on_done: Callable[[SweepRun, int, float], None],
            pass_fds: Sequence[int] = (), live: LiveLine | None = None) -> None:
    """Train `runs` as subprocesses, at most `jobs` at once; `on_done(run, returncode, seconds)` as each ends.
    On an exception (Ctrl-C, SIGTERM) the running children are terminated: their last checkpoints resume later.
    `pass_fds`: the sweep's lock, inherited so that a child orphaned by a killed sweep still holds it.
    `live`: the running trainings' progress, redrawn while they run."""
    pending, running = list(runs), {}
    env, gpus = _child_env(jobs), visible_gpus()
    live = live or LiveLine(None)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                slot = min(set(range(jobs)) - {entry[-1] for entry in running.values()})
                running[run.seed, run.spec.label] = (run, *_start(run, slot_env(env, slot, jobs, gpus), pass_fds),
                                                     time.time(), slot)
            finished = [k for k, (_, proc, *_) in running.items() if proc.poll() is not None]
            if not finished:
                live.draw([entry[0] for entry in running.values()])
                time.sleep(0.2)
            else:
                live.clear()
            for key in finished:
                run, proc, log, t0, _ = running.pop(key)
                log.close()
                on_done(run, proc.returncode, time.time() - t0)
    finally:
        live.clear()
        for run, proc, log, *_ in running.values():
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
