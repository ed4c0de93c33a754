"""`mfmseg sweep`: configs × seeds in one command, resumable, with mean ± std and seed-paired differences.

Why: on the synthetic benchmark seeds spread by about ±2 mIoU while a method changes it by 1-2 points, so one run
per method proves nothing. Pairing by seed (same seed: same data order, same initial weights) removes the spread
that two methods share; the paired difference and how many seeds it is positive on is the number to believe.

Layout: `OUT/runs/<label>/seed<S>/` is an ordinary `mfmseg train` work dir and `OUT/runs/<label>/seed<S>.log`
its output (next to it, so the work dir stays the trainer's); `OUT/results.{md,json,png}` are rewritten,
atomically, after every finished run. Runs go seed-major (every label's seed 0 first), so that the first pairs
are complete early. Re-running the same command continues a killed sweep: a run with `summary.json` is reused,
one with `latest.pth` resumes (`train.resume=true`), any other leftover is started again.

Every training is a subprocess (`python -m mfmseg train ...`), also with `--jobs 1`: one code path, and each run
is isolated (a crash, a leak, a changed torch global or thread count stays in its process; its output goes to
its own log; Ctrl-C or SIGTERM stops the children, whose atomic checkpoints resume later). The parent never
imports torch until it plots. The aggregation (`mean_std`, `paired_difference`, `per_class_means`, `aggregate`,
`results_markdown`) is pure Python on summary dicts, testable without training.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import yaml

import mfmseg
from mfmseg.config import load_config, to_dict
from mfmseg.errors import UserError
from mfmseg.files import atomic_write_text

METRICS = ("mIoU", "mIoU16", "mIoU13")
RESERVED_KEYS = ("work_dir", "seed", "train.resume")  # the sweep sets these per run
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
IGNORED_CONFIG_KEYS = ("work_dir", "train.resume")  # may differ between a saved run and the same run resumed


# ---- specs and the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One positional argument of `mfmseg sweep`: `[LABEL=]PRESET_OR_YAML [key=value ...]`."""
    label: str
    config: str
    overrides: tuple[str, ...] = ()
    text: str = ""


@dataclass
class Run:
    """One (spec, seed) training: its work dir, full override list and what to do with it."""
    spec: RunSpec
    seed: int
    work_dir: Path
    overrides: list[str]
    state: str = "fresh"  # done (summary.json) | resume (latest.pth) | fresh
    status: str = "pending"  # pending | done | failed
    summary: dict | None = None
    error: str = ""
    max_iters: int = 0  # for the live progress line

    @property
    def log(self) -> Path:
        return self.work_dir.with_name(self.work_dir.name + ".log")


def parse_spec(text: str) -> RunSpec:
    """`"mfm=synthetic_dacs_mfm uda.mfm.weight=0.5"` -> RunSpec(label="mfm", config=..., overrides=(...))."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UserError(f"sweep spec {text!r}: {e}") from None
    if not words:
        raise UserError("an empty sweep spec: give a preset or YAML, e.g. 'synthetic_dacs'")
    head, overrides = words[0], tuple(words[1:])
    label, config = head.split("=", 1) if "=" in head else (Path(head).stem, head)
    if not LABEL_RE.fullmatch(label) or not config:
        raise UserError(f"sweep spec {text!r}: label {label!r} must be letters, digits, '_', '.', '+' or '-', "
                        f"followed by '=' and a preset or YAML (e.g. 'mfm=synthetic_dacs_mfm')")
    _check_reserved(overrides, f"sweep spec {text!r}")
    return RunSpec(label=label, config=config, overrides=overrides, text=text)


def _check_reserved(overrides: Sequence[str], where: str) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in RESERVED_KEYS:
            raise UserError(f"{where}: {key}= is set by the sweep (work dirs OUT/runs/<label>/seed<S>, --seeds, "
                            f"resuming); remove it")


def _check_args(specs: Sequence[RunSpec], seeds: Sequence[int], baseline: str | None, jobs: int) -> None:
    labels = [s.label for s in specs]
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(f"two sweep specs have the label {label!r}: name them, e.g. '{label}_b=<config> ...'")
    if baseline is not None and baseline not in labels:
        raise UserError(f"--baseline {baseline!r} is not a label of this sweep ({', '.join(labels)})")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must list distinct seeds (got {' '.join(map(str, seeds)) or 'none'})")
    if jobs < 1:
        raise UserError(f"--jobs {jobs} must be at least 1")


def run_state(work_dir: Path) -> str:
    """done: a finished run (summary.json); resume: a checkpoint to continue from; fresh: anything else."""
    if (work_dir / "summary.json").is_file():
        return "done"
    return "resume" if (work_dir / "latest.pth").is_file() else "fresh"


def _flatten(d: Mapping, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def config_difference(saved: Mapping, wanted: Mapping) -> str | None:
    """The first key whose value differs, as 'key: saved -> wanted'; None if the same run.

    Only keys both configs have count: a key added (or removed) by a newer mfmseg must not orphan finished runs.
    """
    a, b = _flatten(saved), _flatten(wanted)
    for key in a.keys() & b.keys():
        if key not in IGNORED_CONFIG_KEYS and a[key] != b[key]:
            return f"{key}: {a[key]!r} there, {b[key]!r} now"
    return None


def _saved_config(work_dir: Path, state: str) -> dict | None:
    try:
        if state == "done":
            return json.loads((work_dir / "summary.json").read_text()).get("config")
        if (work_dir / "config.yaml").is_file():
            return yaml.safe_load((work_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None  # unreadable: a partial write of a killed run; the trainer decides
    return None


def _load_spec(spec: RunSpec, common: Sequence[str]) -> dict:
    """The spec's resolved config; the runs of its seeds differ from it in `seed` and `work_dir` alone, so one
    load (and one validation) per spec, not per run."""
    try:
        return to_dict(load_config(spec.config, [*common, *spec.overrides]))
    except UserError as e:
        raise UserError(f"sweep spec {spec.text or spec.label!r}: {e}") from None


def _plan_run(spec: RunSpec, config: dict, seed: int, out: Path, common: Sequence[str]) -> Run:
    work_dir = out / "runs" / spec.label / f"seed{seed}"
    overrides = [*common, *spec.overrides, f"work_dir={work_dir}", f"seed={seed}"]
    run = Run(spec=spec, seed=seed, work_dir=work_dir, overrides=overrides, state=run_state(work_dir),
              max_iters=int(config["train"]["max_iters"]))
    saved = _saved_config(work_dir, run.state) if run.state != "fresh" else None
    diff = config_difference(saved, {**config, "seed": seed}) if saved else None
    if diff:
        raise UserError(f"{work_dir} holds a run with other settings ({diff}): delete it to retrain, or use "
                        f"another --out")
    return run


def plan_sweep(specs: Sequence[RunSpec], seeds: Sequence[int], out: Path, common: Sequence[str]) -> list[Run]:
    """Every (seed, spec) run, seed-major, each config loaded and checked before anything trains."""
    _check_reserved(common, "--set")
    configs = {spec.label: _load_spec(spec, common) for spec in specs}
    return [_plan_run(spec, configs[spec.label], seed, out, common) for seed in seeds for spec in specs]


# ---- running -------------------------------------------------------------------------------------------------
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


def train_argv(run: Run) -> list[str]:
    """The child's command line: exactly what a user would type to train this run alone."""
    resume = ["train.resume=true"] if run.state == "resume" else []
    return [sys.executable, "-m", "mfmseg", "train", run.spec.config, *run.overrides, *resume]


def _start(run: Run, env: dict[str, str], pass_fds: Sequence[int]) -> tuple[subprocess.Popen, object]:
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


def execute(runs: Sequence[Run], jobs: int, on_done: Callable[[Run, int, float], None],
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


def _tail_text(path: Path, size: int) -> str:
    """The last `size` bytes of a file that keeps growing ('' while it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def log_tail(path: Path, lines: int = 6) -> list[str]:
    """The last lines of a child's log; tqdm's carriage-return updates count as lines."""
    return [s.strip() for s in re.split(r"[\r\n]+", _tail_text(path, 16384)) if s.strip()][-lines:]


def last_train_row(path: Path) -> dict | None:
    """The newest complete `train` row of a run's metrics.jsonl (read from its end: the file grows all run long;
    a row being written is not JSON yet and is passed over)."""
    for line in reversed(_tail_text(path, 8192).splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("kind") == "train":
            return row
    return None


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}"


def run_progress(run: Run) -> str:
    """`LABEL sS: iteration/max, it/s, ETA` from the run's newest log row ('starting' before its first)."""
    row = last_train_row(run.work_dir / "metrics.jsonl")
    name = f"{run.spec.label} s{run.seed}"
    if row is None:
        return f"{name}: starting"
    done, speed = int(row.get("iter", 0)), float(row.get("it_per_s") or 0.0)
    eta = f", ETA {_duration((run.max_iters - done) / speed)}" if speed > 0 and run.max_iters > done else ""
    return f"{name}: {done}/{run.max_iters} it, {speed:.2f} it/s{eta}"


class LiveLine:
    """The running trainings' progress as one line redrawn in place, at most once a second, on a terminal only:
    a long run between two one-line results must not look hung. A log (not a terminal) gets nothing from it: its
    one line per finished run says enough, without a redraw per second."""

    def __init__(self, stream) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.drawn_at = 0.0
        self.visible = False

    def draw(self, runs: Sequence[Run]) -> None:
        if self.stream is None or not runs or time.monotonic() - self.drawn_at < 1.0:
            return
        self.drawn_at = time.monotonic()
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + " | ".join(run_progress(r) for r in runs)[:width] + "\x1b[K")
        self.stream.flush()
        self.visible = True

    def clear(self) -> None:
        """Before any other output: the next line starts on a clean one."""
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.visible = False


# ---- aggregation (pure) ----------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> dict:
    """n, mean and the sample standard deviation (ddof=1; None below two values)."""
    vals = [float(v) for v in values]
    return {"n": len(vals), "mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else None}


def paired_difference(values: Mapping[str, float], baseline: Mapping[str, float]) -> dict | None:
    """`values - baseline` over the seeds both have: mean ± std of the differences, how many are > 0."""
    diffs = {s: values[s] - baseline[s] for s in values if s in baseline}
    if not diffs:
        return None
    return {**mean_std(list(diffs.values())), "positive": sum(d > 0 for d in diffs.values()), "per_seed": diffs}


def per_class_means(per_class: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Mean IoU per class over runs; a class absent (None) in a run is left out, None if absent in all."""
    classes = list(dict.fromkeys(c for pc in per_class for c in pc))
    means = {}
    for c in classes:
        vals = [pc[c] for pc in per_class if pc.get(c) is not None]
        means[c] = statistics.fmean(vals) if vals else None
    return means


def run_record(run: Run) -> dict:
    """What the JSON keeps of a run: its numbers, status and where it lives."""
    s = run.summary or {}
    return {"label": run.spec.label, "seed": run.seed, "status": run.status, "work_dir": str(run.work_dir),
            "log": str(run.log), "error": run.error or None, **{m: s.get(m) for m in METRICS},
            "per_class_iou": s.get("per_class_iou") or {}, "iters": s.get("iters"),
            "train_seconds": s.get("train_seconds")}


def aggregate(records: Sequence[Mapping], labels: Sequence[str], seeds: Sequence[int],
              baseline: str | None = None) -> dict:
    """Per label: each metric's mean ± std and per-seed values, per-class means, and the paired difference of
    mIoU to `baseline`. `records` are `run_record` dicts (or hand-made ones with the same keys)."""
    by_label: dict[str, dict] = {}
    for label in labels:
        done = [r for r in records if r["label"] == label and r["status"] == "done"]
        entry: dict = {}
        for m in METRICS:
            per_seed = {str(r["seed"]): r[m] for r in done if r.get(m) is not None}
            entry[m] = {**mean_std(list(per_seed.values())), "per_seed": per_seed}
        entry["per_class_iou"] = per_class_means([r.get("per_class_iou") or {} for r in done])
        by_label[label] = entry
    for label, entry in by_label.items():
        entry["vs_baseline"] = None if baseline in (None, label) else paired_difference(
            entry["mIoU"]["per_seed"], by_label[baseline]["mIoU"]["per_seed"])
    return {"seeds": list(seeds), "baseline": baseline, "labels": by_label, "runs": [dict(r) for r in records]}


def _fmt(v: float | None, sign: bool = False) -> str:
    return "—" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def _fmt_ms(stats: Mapping | None, sign: bool = False) -> str:
    if not stats or stats["mean"] is None:
        return "—"
    std = f" ± {stats['std']:.2f}" if stats["std"] is not None else ""
    return _fmt(stats["mean"], sign) + std


def summary_table(results: Mapping) -> str:
    """One row per label: n, mIoU mean ± std, each seed, the paired difference to the baseline, mIoU16/13."""
    seeds, base, labels = results["seeds"], results["baseline"], results["labels"]
    extra = [m for m in METRICS[1:] if any(e[m]["n"] for e in labels.values())]
    head = ["label", "n", "mIoU", *(f"seed {s}" for s in seeds)]
    head += [f"Δ mIoU vs {base} (paired)", "Δ > 0"] if base else []
    head += extra
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in labels.items():
        cells = [label, str(e["mIoU"]["n"]), _fmt_ms(e["mIoU"]), *(_fmt(e["mIoU"]["per_seed"].get(str(s)))
                                                                 for s in seeds)]
        if base:
            d = e["vs_baseline"]
            cells += (["baseline", ""] if label == base else
                      [_fmt_ms(d, sign=True), f"{d['positive']}/{d['n']}" if d else "—"])
        cells += [_fmt_ms(e[m]) for m in extra]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def per_class_table(results: Mapping) -> str:
    labels = results["labels"]
    classes = list(dict.fromkeys(c for e in labels.values() for c in e["per_class_iou"]))
    rows = ["| class | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    rows += ["| " + " | ".join([c, *(_fmt(e["per_class_iou"].get(c)) for e in labels.values())]) + " |"
             for c in classes]
    return "\n".join(rows)


def results_markdown(results: Mapping) -> str:
    """The whole report: summary table, how to read it, per-class means, the specs and unfinished runs."""
    runs = results["runs"]
    done = sum(r["status"] == "done" for r in runs)
    text = [f"# mfmseg sweep: {results.get('out', '')}", "",
            f"{done} of {len(runs)} runs finished; seeds {', '.join(map(str, results['seeds']))}.", "",
            summary_table(results), "",
            "mIoU in % on the target val split. mean ± std: over seeds, sample standard deviation (ddof=1)."]
    if results["baseline"]:
        text.append(f"Δ: per-seed difference to `{results['baseline']}` over the seeds both finished, mean ± std, "
                    f"and on how many of them it is positive.")
    text += ["", "## Per-class IoU (mean over seeds)", "", per_class_table(results), "", "## Runs", ""]
    text += [f"- `{label}`: `{spec}`" for label, spec in results.get("specs", {}).items()]
    if results.get("common"):
        text.append(f"- every run: `{' '.join(results['common'])}`")
    text += [f"- not finished: `{r['label']}` seed {r['seed']} ({r['status']}; log: {r['log']})"
             for r in runs if r["status"] != "done"]
    return "\n".join(text) + "\n"


# ---- writing -------------------------------------------------------------------------------------------------
def plot_results(results: Mapping, path: Path) -> Path | None:
    """Per label a bar (mean mIoU over seeds) with each seed's value as a dot."""
    from mfmseg.engine.evaluation import report  # sets matplotlib's Agg backend; atomic figure writer (imports torch)
    import matplotlib.pyplot as plt

    labels = [lb for lb, e in results["labels"].items() if e["mIoU"]["n"]]
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(labels) + 1), 3.8))
    for i, label in enumerate(labels):
        e = results["labels"][label]["mIoU"]
        ax.bar(i, e["mean"], 0.6, color="#9ecae1", edgecolor="#3182bd")
        vals = list(e["per_seed"].values())
        ax.scatter([i + 0.3 * (k / max(1, len(vals) - 1) - 0.5) * (len(vals) > 1) for k in range(len(vals))],
                   vals, color="black", s=14, zorder=3)
        ax.annotate(f"{e['mean']:.2f}", (i, max(vals)), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 4), textcoords="offset points")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("target val mIoU (%)")
    ax.set_title(f"mean over seeds {', '.join(map(str, results['seeds']))} (dots: seeds)")
    report._save(fig, Path(path))
    return Path(path)


def write_results(out: Path, results: Mapping) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))  # a reader never sees half a table
    atomic_write_text(out / "results.md", results_markdown(results))
    plot_results(results, out / "results.png")


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


# ---- the entry point -----------------------------------------------------------------------------------------
@dataclass
class _Progress:
    total: int
    finished: int = 0
    failed: list[Run] = field(default_factory=list)

    def report(self, run: Run, code: int, seconds: float) -> None:
        self.finished += 1
        where = f"[{self.finished}/{self.total}] {run.spec.label} seed {run.seed}"
        left = f"{self.total - self.finished} left"
        if run.status == "done":
            print(f"{where}: mIoU {_fmt((run.summary or {}).get('mIoU'))} in {seconds:.0f} s, {left}", flush=True)
            return
        self.failed.append(run)
        tail = "\n".join(f"    | {line}" for line in log_tail(run.log))
        print(f"{where}: FAILED (exit {code}) after {seconds:.0f} s, {left}; log: {run.log}\n{tail}", flush=True)


def _finish_run(run: Run, code: int) -> None:
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
    _check_args(specs, seeds, baseline, jobs)
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

        def on_done(run: Run, code: int, seconds: float) -> None:
            _finish_run(run, code)
            progress.report(run, code, seconds)
            write_results(out, results())

        execute(todo, jobs, on_done, pass_fds=lock_fds, live=LiveLine(sys.stdout))
        final = results()
        write_results(out, final)
    return final
