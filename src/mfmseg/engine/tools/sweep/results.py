"""What a sweep writes: the summary and per-class markdown tables, the results figure, results.{json,md,png}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping


from mfmseg.engine.tools.sweep.aggregation import METRICS
from mfmseg.files import atomic_write_text


def format_number(v: float | None, sign: bool = False) -> str:
    return "—" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def _fmt_ms(stats: Mapping | None, sign: bool = False) -> str:
    if not stats or stats["mean"] is None:
        return "—"
    std = f" ± {stats['std']:.2f}" if stats["std"] is not None else ""
    return format_number(stats["mean"], sign) + std


def summary_table(results: Mapping) -> str:
    """One row per label: n, mIoU mean ± std, each seed, the paired difference to the baseline, mIoU16/13."""
    seeds, base, labels = results["seeds"], results["baseline"], results["labels"]
    extra = [m for m in METRICS[1:] if any(e[m]["n"] for e in labels.values())]
    head = ["label", "n", "mIoU", *(f"seed {s}" for s in seeds)]
    head += [f"Δ mIoU vs {base} (paired)", "Δ > 0"] if base else []
    head += extra
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in labels.items():
        cells = [label, str(e["mIoU"]["n"]), _fmt_ms(e["mIoU"]), *(format_number(e["mIoU"]["per_seed"].get(str(s)))
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
    rows += ["| " + " | ".join([c, *(format_number(e["per_class_iou"].get(c)) for e in labels.values())]) + " |"
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
