"""Figures and tables of studies/mfm/README.md from a finished (or running) `mfmseg sweep` folder.

    python studies/mfm/study_mfm_figures.py study_mfm/sweep --out studies/mfm/figures

Prints the seed-paired summary table of every label with finished runs (the sweep's own aggregation, so runs
from several `mfmseg sweep` invocations into one folder are reported together), then reads every run's
`metrics.jsonl`: the pseudo-label weight q (the share of target pixels whose teacher confidence
is ≥ τ = 0.968, the weight of every target loss, MFM's included) and the MFM loss over training, averaged over
seeds per label; prints the q table (Markdown) and writes `study_q.png`.
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


def curves(run_dir: Path, key: str) -> dict[int, float]:
    """{iteration: value} of one metric in a run's training log."""
    out = {}
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return out
    for row in read_jsonl(path):
        if row.get("kind") == "train" and key in row:
            out[int(row["iter"])] = float(row[key])
    return out


def mean_curve(label_dir: Path, key: str) -> dict[int, float]:
    """Mean over the finished seeds of a label, at the iterations all of them logged."""
    runs = [curves(d, key) for d in sorted(label_dir.glob("seed*")) if (d / "summary.json").exists()]
    runs = [r for r in runs if r]
    if not runs:
        return {}
    common = sorted(set.intersection(*(set(r) for r in runs)))
    return {i: statistics.fmean(r[i] for r in runs) for i in common}


def summary_table(sweep: Path, baseline: str) -> str:
    """Every finished run under `sweep/runs/<label>/seed<S>/summary.json`, aggregated and paired by seed."""
    from mfmseg.engine.tools.sweep.aggregation import aggregate
    from mfmseg.engine.tools.sweep.results import summary_table as table

    records, labels, seeds = [], [], set()
    for summary in sorted(sweep.glob("runs/*/seed*/summary.json")):
        label, seed = summary.parent.parent.name, int(summary.parent.name[len("seed"):])
        s = json.loads(summary.read_text())
        records.append({"label": label, "seed": seed, "status": "done", "mIoU": s.get("mIoU"),
                        "mIoU16": s.get("mIoU16"), "mIoU13": s.get("mIoU13"),
                        "per_class_iou": s.get("per_class_iou") or {}})
        labels += [label] if label not in labels else []
        seeds.add(seed)
    labels.sort(key=lambda lb: (lb != baseline, lb))
    return table(aggregate(records, labels, sorted(seeds), baseline if baseline in labels else None))


def window_mean(curve: dict[int, float], lo: int, hi: int) -> float | None:
    vals = [v for i, v in curve.items() if lo < i <= hi]
    return statistics.fmean(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--labels", nargs="*", default=["dacs", "dacs_mfm", "mfm_mask0", "dacs_800", "dacs_mfm_800"])
    ap.add_argument("--baseline", default="dacs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(summary_table(args.sweep, args.baseline) + "\n")
    fig, (ax_q, ax_l) = plt.subplots(1, 2, figsize=(10, 3.6))
    windows = [(0, 100), (100, 200), (200, 300), (300, 400), (400, 800), (800, 1200)]
    print("| label | " + " | ".join(f"q, it {lo}–{hi}" for lo, hi in windows) + " |")
    print("|---|" + "---|" * len(windows))
    for label in args.labels:
        q = mean_curve(args.sweep / "runs" / label, "pseudo_q")
        if not q:
            continue
        ax_q.plot(list(q), list(q.values()), label=label)
        cells = [window_mean(q, lo, hi) for lo, hi in windows]
        print(f"| {label} | " + " | ".join("—" if c is None else f"{c:.2f}" for c in cells) + " |")
        mfm = mean_curve(args.sweep / "runs" / label, "loss_mfm")
        if mfm:
            ax_l.plot(list(mfm), list(mfm.values()), label=label)
    ax_q.set(xlabel="iteration", ylabel="pseudo-label weight q", title="q (mean over seeds)")
    ax_l.set(xlabel="iteration", ylabel="λ·L_mfm (q-weighted)", title="MFM loss (mean over seeds)")
    for ax in (ax_q, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "study_q.png", dpi=110)
    print(f"\nwrote {args.out / 'study_q.png'}")


if __name__ == "__main__":
    main()
