"""Tables and figures of the long-schedule MFM study (studies/mfm/README.md, issue 16) from its sweep folders.

    python studies/mfm/study_mfm_long.py study_mfm_long/sweep_long study_mfm_long/sweep_normeval \
        --out studies/mfm/figures
    python studies/mfm/study_mfm_long.py studies/mfm/runs/issue16/sweep_a studies/mfm/runs/issue16/sweep_b \
        --recorded studies/mfm/runs/issue16/lost_logs.json --out studies/mfm/figures      # the study's own tables

Reads every run's `metrics.jsonl`, finished or not (a run still training, or stopped when the CPU budget ran out,
contributes the evaluations it reached, marked as partial), plus `--recorded` runs whose logs were lost (their
mIoU per evaluation as printed at the time: they pair like any run, and have no per-class, q or MFM-loss rows),
and prints in Markdown:

1. every run's target val mIoU at each evaluation (400, 800, ... iterations);
2. per comparison (`--compare LABEL:BASELINE ...`; by default the study's questions, those whose runs exist), the
   seed-paired difference at each evaluation: the curve of Δ over training, mean ± sample std and on how many
   seeds it is positive (only seeds where both runs reached that evaluation);
3. per comparison, the per-class Δ at the last evaluation both runs of a seed reached (mean over those seeds);
4. the pseudo-label weight q (the weight of every target loss, MFM's included) and the MFM loss over the last
   third of training and over fixed windows, per run.

Writes `study_long.png`: q per label (one panel each, one line per seed: no series hides another) and the paired
Δ curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mfmseg.files import read_jsonl  # noqa: E402

# The study's questions: what MFM buys over DACS; what the extra pass alone does (lambda 0, target_bn_pass); what
# MFM's gradient buys beyond its extra pass; the same with the encoder's statistics frozen; the mask strategies;
# the mechanism (MFM's pass without the target batch's statistics: eval-mode BatchNorm, or frozen running ones).
COMPARISONS = ["dacs_mfm_2k:dacs_2k", "mfm_lambda0_2k:dacs_2k", "dacs_bnpass_2k:dacs_2k",
               "dacs_bnpass_2k:mfm_lambda0_2k", "dacs_mfm_2k:mfm_lambda0_2k", "dacs_mfm_ne:dacs_ne",
               "dacs_mfm_ne_2k:dacs_ne_2k", "mfm_uncertain_2k:dacs_mfm_2k", "mfm_confident_2k:dacs_mfm_2k",
               "mfm_uncertain_2k:dacs_2k", "dacs_mfm_2k:mfm_bneval_2k", "mfm_bneval_2k:dacs_2k",
               "mfm_bneval_2k:mfm_lambda0_2k", "mfm_bnfrozen_2k:dacs_2k", "dacs_mfm_2k:mfm_bnfrozen_2k"]


def read_run(run_dir: Path) -> dict:
    """{"val": {iter: mIoU}, "classes": {iter: {class: IoU}}, "q": {iter: q}, "mfm": {iter: loss}, "done": bool,
    "max_iters": int | None}. A half-written last line (a run killed mid-write) is skipped."""
    val, classes, q, mfm = {}, {}, {}, {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        it = int(row.get("iter", -1))
        if row.get("kind") == "val" and row.get("mIoU") is not None:
            val[it] = float(row["mIoU"])
            classes[it] = row.get("per_class_iou") or {}
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
    return {"val": val, "classes": classes, "q": q, "mfm": mfm, "done": (run_dir / "summary.json").exists(), "max_iters": max_iters}


def read_sweeps(folders: list[Path]) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for folder in folders:
        for log in sorted(folder.glob("runs/*/seed*/metrics.jsonl")):
            label, seed = log.parent.parent.name, int(log.parent.name[len("seed"):])
            runs.setdefault(label, {})[seed] = read_run(log.parent)
    return runs


def read_recorded(path: Path) -> dict[str, dict[int, dict]]:
    """Runs whose logs were lost (the study machine is reset between sessions), from a JSON file
    {label: {seed: {iteration: mIoU}}} holding the two-decimal values this script printed from their logs at the
    time. So every Δ of the study is computed here, not by hand; the values are only as exact as their decimals."""
    runs: dict[str, dict[int, dict]] = {}
    for label, seeds in json.loads(path.read_text()).items():
        for seed, val in seeds.items():
            val = {int(it): float(m) for it, m in val.items()}
            runs.setdefault(label, {})[int(seed)] = {"val": val, "classes": {}, "q": {}, "mfm": {}, "done": True,
                                                     "max_iters": max(val), "recorded": True}
    return runs


def merge_runs(*sources: dict[str, dict[int, dict]]) -> dict[str, dict[int, dict]]:
    """Later sources fill in only the (label, seed) pairs earlier ones lack: a log beats a transcription."""
    runs: dict[str, dict[int, dict]] = {}
    for source in sources:
        for label, seeds in source.items():
            for seed, run in seeds.items():
                runs.setdefault(label, {}).setdefault(seed, run)
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
            status = ("done (log lost)" if run.get("recorded") else
                      "done" if run["done"] else f"partial ({max(run['q'], default=0)} it)")
            lines.append(f"| {label} | {seed} | " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines)


def paired(runs: dict[str, dict[int, dict]], label: str, baseline: str, p: int) -> list[tuple[int, float]]:
    """(seed, Δ mIoU at evaluation p) for every seed where both runs reached p."""
    base = runs.get(baseline, {})
    return [(s, run["val"][p] - base[s]["val"][p]) for s, run in sorted(runs.get(label, {}).items())
            if s in base and p in run["val"] and p in base[s]["val"]]


def delta_table(runs: dict[str, dict[int, dict]], pairs: list[tuple[str, str]], points: list[int]
                ) -> tuple[str, dict]:
    curves: dict[str, dict[int, list[float]]] = {}
    lines = ["| comparison | " + " | ".join(f"Δ at it {p} (n, Δ>0)" for p in points) + " |",
             "|---|" + "---|" * len(points)]
    for label, baseline in pairs:
        cells = []
        for p in points:
            diffs = [d for _, d in paired(runs, label, baseline, p)]
            curves.setdefault(f"{label} − {baseline}", {})[p] = diffs
            cells.append(f"{mean_std(diffs)} ({len(diffs)}, {sum(d > 0 for d in diffs)}/{len(diffs)})"
                         if diffs else "—")
        lines.append(f"| {label} − {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines), curves


def class_delta_table(runs: dict[str, dict[int, dict]], pairs: list[tuple[str, str]]) -> str:
    """Per-class Δ IoU at the latest evaluation any seed's pair of runs reached, averaged over the seeds whose
    pair reached it: a partial seed is left out rather than mixed in at an earlier point of training."""
    rows, names = {}, []
    for label, baseline in pairs:
        common = {seed: set(run["classes"]) & set(runs[baseline][seed]["classes"])
                  for seed, run in sorted(runs.get(label, {}).items()) if seed in runs.get(baseline, {})}
        reached = [it for its in common.values() for it in its]
        if not reached:
            continue
        at = max(reached)
        per_seed = []
        for seed in (s for s, its in common.items() if at in its):
            a, b = runs[label][seed]["classes"][at], runs[baseline][seed]["classes"][at]
            per_seed.append({c: a[c] - b[c] for c in a if a[c] is not None and b.get(c) is not None})
            names = names or list(a)
        rows[f"{label} − {baseline} (n={len(per_seed)}, it {at})"] = {
            c: statistics.fmean(d[c] for d in per_seed) for c in names if all(c in d for d in per_seed)}
    if not rows:
        return ""
    lines = ["| comparison | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, deltas in rows.items():
        lines.append(f"| {key} | " + " | ".join(f"{deltas[c]:+.1f}" if c in deltas else "—" for c in names) + " |")
    return "\n".join(lines)


def q_table(runs: dict[str, dict[int, dict]]) -> str:
    """q and (for MFM runs) the MFM loss, as "q / loss", over the last third and over 400-iteration windows."""
    lines = ["| label | seed | q / MFM loss, last third | it 0–400 | 400–800 | 800–1200 | 1200–1600 | 1600–2000 |",
             "|---|---|---|---|---|---|---|---|"]
    for label in sorted(runs):
        for seed, run in sorted(runs[label].items()):
            if not run["q"]:  # a recorded run: its q was not kept
                continue
            n = run["max_iters"] or max(run["q"])
            finished = max(run["q"]) >= n

            def cell(lo: float, hi: float, show: bool = True) -> str:
                q, loss = window_mean(run["q"], lo, hi), window_mean(run["mfm"], lo, hi)
                if not show or q is None:
                    return "—"
                return f"{q:.2f}" + (f" / {loss:.3f}" if loss is not None else "")

            cells = [cell(lo, lo + 400) for lo in range(0, 2000, 400)]
            lines.append(f"| {label} | {seed} | {cell(2 * n / 3, n, finished)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict]], curves: dict, path: Path) -> None:
    labels = sorted(label for label, seeds in runs.items() if any(run["q"] for run in seeds.values()))
    # the Δ panel is twice as wide, its legend (one entry per comparison) beside it rather than over the curves
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(3.2 * (len(labels) + 4), 3.2), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * len(labels) + [2]})
    for ax, label in zip(axes[0], labels):
        for seed, run in sorted(runs[label].items()):
            if run["q"]:
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
    ax.set(title="paired Δ mIoU", xlabel="iteration", ylabel="Δ mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", type=Path, nargs="+")
    ap.add_argument("--compare", nargs="+", default=COMPARISONS, metavar="LABEL:BASELINE")
    ap.add_argument("--out", type=Path, help="folder for the figure (none without it: the tables only)")
    ap.add_argument("--name", default="study_long.png")
    ap.add_argument("--recorded", type=Path, metavar="JSON",
                    help="{label: {seed: {iteration: mIoU}}} of runs whose logs were lost")
    args = ap.parse_args()
    runs = merge_runs(read_sweeps(args.sweeps), read_recorded(args.recorded) if args.recorded else {})
    points = sorted({p for label in runs.values() for run in label.values() for p in run["val"]})
    print(runs_table(runs, points) + "\n")
    pairs = [tuple(c.split(":", 1)) for c in args.compare]
    shares_a_seed = lambda label, base: bool(runs.get(label, {}).keys() & runs.get(base, {}).keys())
    pairs = [(label, base) for label, base in pairs if shares_a_seed(label, base)]
    table, curves = delta_table(runs, pairs, points)
    print(table + "\n")
    print(class_delta_table(runs, pairs) + "\n")
    print(q_table(runs) + "\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(runs, curves, args.out / args.name)
        print(f"wrote {args.out / args.name}")


if __name__ == "__main__":
    main()
