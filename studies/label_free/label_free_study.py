"""How well does each label-free metric pick checkpoints? (docs/label_free.md, issue 19)

    python studies/label_free/label_free_study.py label_free_study/sweep [more sweep folders or run dirs]

Reads every run's `metrics.jsonl` (evaluations that logged both the true mIoU and the label-free metrics) and prints,
per metric: the Spearman rank correlation with true mIoU over all evaluations pooled and within each run (mean over
runs), and the mIoU regret of selecting by the metric within each run: against the best evaluation by true mIoU
(oracle − selected, ≥ 0) and against simply taking the last evaluation (last − selected: > 0 means the metric
picks worse than "last"). Then, per run label (the sweep's `runs/LABEL/seedN`), the mean final and peak mIoU and the
regret of "last" and of the best metrics, because selection only earns its keep on runs that get worse.
Only finished runs (a `summary.json` beside the log) are used unless --partial; `--out DIR` also writes
label_free_study.png (true mIoU and the watched metrics over training, one panel per label).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from mfmseg.engine.evaluation.label_free import METRICS
from mfmseg.files import read_jsonl


def ranks(values: list[float]) -> np.ndarray:
    """Ranks with ties averaged (Spearman's convention)."""
    v = np.asarray(values, dtype=float)
    order = v.argsort(kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def read_runs(paths: list[Path], partial: bool = False) -> dict[str, list[dict]]:
    logs = [p / "metrics.jsonl" for p in paths if (p / "metrics.jsonl").is_file()]
    logs += [log for p in paths for log in sorted(p.glob("runs/*/seed*/metrics.jsonl"))]
    runs = {}
    for log in logs:
        if not partial and not (log.parent / "summary.json").is_file():
            continue
        rows = [row for row in read_jsonl(log)
                if row.get("kind") == "val" and row.get("mIoU") is not None and row.get("label_free")]
        if rows:
            runs[str(log.parent)] = sorted(rows, key=lambda r: r["iter"])
    return runs


def select_by(rows: list[dict], metric: str) -> dict:
    """The evaluation a metric selects: its best value, in the metric's own direction."""
    return (max if METRICS[metric] else min)(rows, key=lambda r: r["label_free"][metric])


def study(runs: dict[str, list[dict]]) -> list[dict]:
    table = []
    for metric, higher in METRICS.items():
        pooled = [(r["label_free"][metric], r["mIoU"]) for rows in runs.values() for r in rows
                  if metric in r["label_free"]]
        if not pooled:
            continue
        within, regret_oracle, regret_last = [], [], []
        for rows in runs.values():
            rows = [r for r in rows if metric in r["label_free"]]
            if not rows:
                continue
            rho = spearman([r["label_free"][metric] for r in rows], [r["mIoU"] for r in rows])
            if rho is not None:
                within.append(rho if higher else -rho)
            pick = select_by(rows, metric)
            regret_oracle.append(max(r["mIoU"] for r in rows) - pick["mIoU"])
            regret_last.append(rows[-1]["mIoU"] - pick["mIoU"])
        rho_all = spearman(*map(list, zip(*pooled)))
        table.append({"metric": metric, "rho_pooled": None if rho_all is None else (rho_all if higher else -rho_all),
                      "rho_within": statistics.fmean(within) if within else None,
                      "regret_vs_oracle": statistics.fmean(regret_oracle),
                      "regret_vs_last": statistics.fmean(regret_last),
                      "beats_last_on": sum(d < 0 for d in regret_last), "runs": len(regret_last)})
    return table


def markdown(table: list[dict], runs: dict) -> str:
    fmt = lambda v: "—" if v is None else f"{v:+.2f}"  # noqa: E731
    lines = [f"{len(runs)} runs, {sum(len(r) for r in runs.values())} evaluations. ρ is signed so that +1 means "
             "'better by the metric = higher mIoU'.", "",
             "| metric | ρ pooled | ρ within runs (mean) | regret vs oracle (mIoU) | last − selected (mIoU) | "
             "beats last on |", "|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['metric']} | {fmt(row['rho_pooled'])} | {fmt(row['rho_within'])} | "
                     f"{row['regret_vs_oracle']:.2f} | {row['regret_vs_last']:+.2f} | "
                     f"{row['beats_last_on']}/{row['runs']} |")
    oracle_last = [max(r["mIoU"] for r in rows) - rows[-1]["mIoU"] for rows in runs.values()]
    lines += ["", f"taking the last evaluation: regret vs oracle {statistics.fmean(oracle_last):.2f} mIoU"]
    return "\n".join(lines)


def label_of(run: str) -> str:
    """`.../runs/LABEL/seedN` -> LABEL (a bare run dir is its own label)."""
    path = Path(run)
    return path.parent.name if path.name.startswith("seed") else path.name


def by_label(runs: dict[str, list[dict]], metrics: list[str]) -> str:
    """Per label: final and peak mIoU, and each selection rule's regret against the run's own peak."""
    groups: dict[str, list[list[dict]]] = {}
    for run, rows in runs.items():
        groups.setdefault(label_of(run), []).append(rows)
    head = "| label | runs | final mIoU | peak mIoU | regret: last | " + " | ".join(f"regret: {m}" for m in metrics)
    lines = [head + " |", "|---" * (5 + len(metrics)) + "|"]
    for label, group in groups.items():
        peak = [max(r["mIoU"] for r in rows) for rows in group]
        cells = [f"{statistics.fmean(rows[-1]['mIoU'] for rows in group):.2f}", f"{statistics.fmean(peak):.2f}",
                 f"{statistics.fmean(p - rows[-1]['mIoU'] for p, rows in zip(peak, group)):.2f}"]
        for metric in metrics:
            regrets = []
            for p, rows in zip(peak, group):
                rows = [r for r in rows if metric in r["label_free"]]
                if rows:
                    regrets.append(p - select_by(rows, metric)["mIoU"])
            cells.append(f"{statistics.fmean(regrets):.2f}" if regrets else "—")
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], metrics: list[str], out: Path) -> Path:
    """One panel per label: true mIoU (black) and each metric mapped linearly onto its run's mIoU range, so a
    metric that ranks checkpoints well follows the black line (ranking is all that selection uses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({label_of(run) for run in runs})
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        group = [rows for run, rows in runs.items() if label_of(run) == label]
        for n, rows in enumerate(group):
            its = [r["iter"] for r in rows]
            miou = np.array([r["mIoU"] for r in rows])
            ax.plot(its, miou, color="black", lw=1.4, label="true mIoU" if n == 0 else None)
            for colour, metric in zip(colours, metrics):
                v = np.array([r["label_free"].get(metric, np.nan) for r in rows], dtype=float)
                if np.isnan(v).all():
                    continue
                v = v if METRICS[metric] else -v
                span = np.nanmax(v) - np.nanmin(v)
                v = (v - np.nanmin(v)) / span if span > 0 else v * 0
                ax.plot(its, miou.min() + v * (miou.max() - miou.min()), color=colour, lw=0.8, alpha=0.8,
                        label=metric if n == 0 else None)
        ax.set_title(f"{label} ({len(group)} runs)")
        ax.set_xlabel("iteration")
    for ax in axes[:, 0]:
        ax.set_ylabel("mIoU (metrics rescaled per run)")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "label_free_study.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", type=Path, nargs="+", help="sweep folders or run dirs")
    ap.add_argument("--partial", action="store_true", help="also use runs that have not finished")
    ap.add_argument("--metrics", nargs="+", default=["im", "agreement", "entropy"], help="per-label columns, plot")
    ap.add_argument("--out", type=Path, help="folder for label_free_study.png")
    args = ap.parse_args()
    runs = read_runs(args.paths, args.partial)
    if not runs:
        raise SystemExit("no run logged both mIoU and label-free metrics")
    print(markdown(study(runs), runs))
    print()
    print(by_label(runs, args.metrics))
    if args.out:
        print(f"figure: {plot(runs, args.metrics, args.out)}")


if __name__ == "__main__":
    main()
