"""Tables and figures of the long-schedule MFM study (docs/study_mfm.md, issue 16) from its sweep folders.

    python docs/study_mfm_long.py study_mfm_long/sweep_long [more sweep folders] --baseline dacs_2k --out docs/figures

Reads every run's `metrics.jsonl`, finished or not (a run still training, or stopped when the CPU budget ran out,
contributes the evaluations it reached, marked as partial), and prints in Markdown:

1. every run's target val mIoU at each evaluation (400, 800, ... iterations);
2. per label, the seed-paired difference to the baseline at each evaluation: the curve of Δ over training,
   mean ± sample std and on how many seeds it is positive (only seeds where both runs reached that evaluation);
3. the pseudo-label weight q (the weight of every target loss, MFM's included) over the last third of training
   and over fixed windows, per run.

Writes `study_long.png`: q per label (one panel each, one line per seed: no series hides another) and the paired
Δ curves. Labels are compared only with the baseline of their own folder's sweep.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(run_dir: Path) -> dict:
    """{"val": {iter: mIoU}, "q": {iter: q}, "mfm": {iter: loss}, "done": bool, "max_iters": int | None}.
    A half-written last line (a run killed mid-write) is skipped."""
    val, q, mfm = {}, {}, {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        it = int(row.get("iter", -1))
        if row.get("kind") == "val" and row.get("mIoU") is not None:
            val[it] = float(row["mIoU"])
        elif row.get("kind") == "train":
            if "pseudo_q" in row:
                q[it] = float(row["pseudo_q"])
            if "loss_mfm" in row:
                mfm[it] = float(row["loss_mfm"])
    max_iters = None
    config = run_dir / "config.yaml"
    if config.exists():
        for line in config.read_text().splitlines():
            if line.strip().startswith("max_iters:"):
                max_iters = int(line.split(":")[1])
    return {"val": val, "q": q, "mfm": mfm, "done": (run_dir / "summary.json").exists(), "max_iters": max_iters}


def read_sweeps(folders: list[Path]) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for folder in folders:
        for log in sorted(folder.glob("runs/*/seed*/metrics.jsonl")):
            label, seed = log.parent.parent.name, int(log.parent.name[len("seed"):])
            runs.setdefault(label, {})[seed] = read_run(log.parent)
    return runs


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:+.2f}"
    return f"{statistics.fmean(values):+.2f} ± {statistics.stdev(values):.2f}"


def window_mean(curve: dict[int, float], lo: float, hi: float) -> float | None:
    vals = [v for i, v in curve.items() if lo < i <= hi]
    return statistics.fmean(vals) if vals else None


def runs_table(runs: dict[str, dict[int, dict]], points: list[int]) -> str:
    lines = ["| label | seed | " + " | ".join(f"it {p}" for p in points) + " | status |",
             "|---|---|" + "---|" * (len(points) + 1)]
    for label in sorted(runs):
        for seed, run in sorted(runs[label].items()):
            cells = [f"{run['val'][p]:.2f}" if p in run["val"] else "—" for p in points]
            status = "done" if run["done"] else f"partial ({max(run['q'], default=0)} it)"
            lines.append(f"| {label} | {seed} | " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines)


def delta_table(runs: dict[str, dict[int, dict]], baseline: str, points: list[int]) -> tuple[str, dict]:
    base = runs.get(baseline, {})
    curves: dict[str, dict[int, list[float]]] = {}
    lines = [f"| label − {baseline} | " + " | ".join(f"Δ at it {p} (n, Δ>0)" for p in points) + " |",
             "|---|" + "---|" * len(points)]
    for label in sorted(runs):
        if label == baseline:
            continue
        cells = []
        for p in points:
            diffs = [run["val"][p] - base[s]["val"][p] for s, run in sorted(runs[label].items())
                     if s in base and p in run["val"] and p in base[s]["val"]]
            curves.setdefault(label, {})[p] = diffs
            cells.append(f"{mean_std(diffs)} ({len(diffs)}, {sum(d > 0 for d in diffs)}/{len(diffs)})"
                         if diffs else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines), curves


def q_table(runs: dict[str, dict[int, dict]]) -> str:
    lines = ["| label | seed | q, last third | q, it 0–400 | 400–800 | 800–1200 | 1200–1600 | 1600–2000 |",
             "|---|---|---|---|---|---|---|---|"]
    for label in sorted(runs):
        for seed, run in sorted(runs[label].items()):
            n = run["max_iters"] or max(run["q"], default=0)
            last = window_mean(run["q"], 2 * n / 3, n) if max(run["q"], default=0) >= n else None
            cells = [window_mean(run["q"], lo, lo + 400) for lo in range(0, 2000, 400)]
            fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {label} | {seed} | {fmt(last)} | " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict]], curves: dict, baseline: str, path: Path) -> None:
    labels = sorted(runs)
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(3.2 * (len(labels) + 1), 3.2), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for seed, run in sorted(runs[label].items()):
            ax.plot(list(run["q"]), list(run["q"].values()), lw=0.8, label=f"seed {seed}")
        ax.set(title=label, xlabel="iteration", ylabel="q", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    ax = axes[0][-1]
    for label, by_point in curves.items():
        pts = [p for p, d in by_point.items() if d]
        if pts:
            ax.errorbar(pts, [statistics.fmean(by_point[p]) for p in pts],
                        yerr=[statistics.stdev(by_point[p]) if len(by_point[p]) > 1 else 0 for p in pts],
                        marker="o", capsize=3, label=label)
    ax.axhline(0, color="black", lw=0.6)
    ax.set(title=f"paired Δ mIoU vs {baseline}", xlabel="iteration", ylabel="Δ mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", type=Path, nargs="+")
    ap.add_argument("--baseline", default="dacs_2k")
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--name", default="study_long.png")
    args = ap.parse_args()
    runs = read_sweeps(args.sweeps)
    points = sorted({p for label in runs.values() for run in label.values() for p in run["val"]})
    print(runs_table(runs, points) + "\n")
    table, curves = delta_table(runs, args.baseline, points)
    print(table + "\n")
    print(q_table(runs) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, curves, args.baseline, args.out / args.name)
    print(f"wrote {args.out / args.name}")


if __name__ == "__main__":
    main()
